/* Pushes over the websocket go to every page a trader has open (the book, an order, the dashboard...).
   This htmx extension, beside "ws", drops the pieces of a push whose target this page does not show,
   so htmx does not log an error for each of them (htmx:oobErrorNoTarget). */
(function () {
  function target(piece) {
    var spec = piece.getAttribute("hx-swap-oob") || "true";
    var colon = spec.indexOf(":");
    if (colon >= 0) return spec.slice(colon + 1);
    return piece.id ? "#" + CSS.escape(piece.id) : null;
  }
  function shown(piece) {
    var selector = target(piece);
    try {
      return !!(selector && document.querySelector(selector));
    } catch (e) {
      return true; // a selector this code does not understand: let htmx judge it
    }
  }
  /* Rows carry their order's version (its last change, in microseconds), its filled quantity and
     whether it is final for good (data-final: filled, cancelled or rejected; a failed order may yet be
     found at its broker). Pushes and answers are rendered on different threads and may arrive out of
     order: a row older than the one on the page (an order's "Open" rendered before its fill) must
     not replace it. An order never fills less, nor leaves a final state for a live one, whatever
     two hosts' clocks say. The dashboard's live parts (PnL, positions, trades, errors) carry the time
     their state was read: a push read before the last fill, arriving after one read after it, is
     dropped. */
  function number(el, name) {
    var v = el && el.getAttribute && el.getAttribute(name);
    return v ? Number(v) : null;
  }
  function onPage(row) {
    return row.id ? document.getElementById(row.id) : null;
  }
  function older(row) {
    return olderThan(row, onPage(row));
  }
  function olderThan(row, page) {
    var mine = number(row, "data-version"), theirs = number(page, "data-version");
    if (mine === null || theirs === null) return false;
    // Said either way: a final row or a fuller fill is the newer, whatever version it carries.
    var final = row.hasAttribute("data-final");
    if (final !== page.hasAttribute("data-final")) return !final;
    var filled = number(row, "data-filled"), shownFilled = number(page, "data-filled");
    if (filled !== shownFilled) return filled < shownFilled;
    return mine < theirs;
  }
  /* A new order's push and its first change's (a fill) are sent by different processes and may arrive
     the other way round: the change, with no row to replace yet, is dropped, and the new order's row
     would then go in as it was placed (a filled order shown Open). The newest of each dropped row is
     kept a while; a new order's row older than it goes in as that one instead. */
  var dropped = new Map();
  var DROPPED_KEPT = 500;
  function keepDropped(piece) {
    if (piece.tagName !== "TR" || !piece.id || !piece.hasAttribute("data-version")) return;
    var kept = dropped.get(piece.id);
    if (kept && !olderThan(kept, piece)) return;
    dropped.delete(piece.id);
    dropped.set(piece.id, piece);
    if (dropped.size > DROPPED_KEPT) dropped.delete(dropped.keys().next().value);
  }
  function newestOf(row) {
    var kept = dropped.get(row.id);
    if (!kept || !olderThan(row, kept)) return row;
    var newer = kept.cloneNode(true);
    newer.removeAttribute("hx-swap-oob");
    row.replaceWith(newer);
    return newer;
  }
  /* A live part pushed as it was read (the dashboard's open orders) replaces the page's: an order row the
     page got since that read (a new order's push, from another process, arriving first) is not in it, and
     would go until the next push. Such a row stays on top. */
  function keepNewerRows(piece) {
    var page = onPage(piece), read = number(piece, "data-version"), tbody = piece.querySelector("#order-rows");
    if (!page || read === null || !tbody) return false;
    var newer = Array.from(page.querySelectorAll("#order-rows > tr[id][data-version]")).filter(function (row) {
      return number(row, "data-version") > read && !piece.querySelector("#" + CSS.escape(row.id));
    });
    newer.reverse().forEach(function (row) { tbody.prepend(row.cloneNode(true)); });
    var empty = newer.length && piece.querySelector("#open-orders-empty");
    if (empty) empty.remove();
    return newer.length > 0;
  }
  /* A piece's versioned elements: itself (a live part of the dashboard, as of when it was read) and
     the order rows in it (the open orders: a row pushed on its own since may be newer than its read). */
  function rows(piece) {
    var inner = Array.from(piece.querySelectorAll("[data-version]"));
    return piece.hasAttribute("data-version") ? [piece].concat(inner) : inner;
  }
  /* A page whose websocket was down (a server restart) or not yet open when it was rendered missed the
     pushes of that time: when the socket opens, a page with order rows ([data-resync-rows]: the book, an
     order's page) reads itself again. Each row shown takes its current one, unless that is older or the
     row is open for an inline modify; orders new since go on top of the book's rows. A row shown that
     the page's answer no longer lists (a filtered book's order filled or cancelled meanwhile, one moved
     to the next page) is read again with the others of its kind, in one request ([data-rows-url]). */
  function resyncRow(row) {
    var shown = onPage(row);
    if (!shown || shown.classList.contains("editing") || older(row)) return;
    var node = document.importNode(row, true);
    shown.replaceWith(node);
    htmx.process(node);
  }
  function resyncUnlisted(table, fresh) {
    var url = table.getAttribute("data-rows-url");
    if (!url || !fresh.querySelector("[data-resync-rows]")) return;  // not the page (a sign-in page): no answer
    var ids = [];
    table.querySelectorAll("tr[id^='order-'][data-version]").forEach(function (shown) {
      if (fresh.getElementById(shown.id) || shown.closest("[hidden]")) return;  // hidden: new ones out of sight
      var pk = shown.id.slice("order-".length);
      if (/^[0-9]+$/.test(pk)) ids.push(pk);
    });
    // In requests of at most 100 rows (orders.views.ROWS_MAX), not one request a row.
    for (var start = 0; start < ids.length; start += 100) {
      var query = ids.slice(start, start + 100).map(function (pk) { return "id=" + pk; }).join("&");
      fetch(url + "?" + query, {credentials: "same-origin", cache: "no-store"})
        .then(function (answer) { return answer.ok ? answer.text() : null; })
        .then(function (html) {
          if (!html) return;
          var holder = document.createElement("template");  // rows parse only inside a table
          holder.innerHTML = html;
          holder.content.querySelectorAll("tr[id^='order-'][data-version]").forEach(resyncRow);
        })
        .catch(function () {});
    }
  }
  function resyncRows() {
    if (!document.querySelector("[data-resync-rows]") || !window.fetch) return;
    fetch(location.href, {credentials: "same-origin", cache: "no-store"})
      .then(function (answer) { return answer.ok ? answer.text() : null; })
      .then(function (html) {
        if (!html) return;
        var fresh = new DOMParser().parseFromString(html, "text/html");
        var added = [];
        fresh.querySelectorAll("[data-resync-rows] tr[id][data-version]").forEach(function (row) {
          if (!onPage(row)) { added.push(row); return; }
          resyncRow(row);
        });
        document.querySelectorAll("[data-resync-rows]").forEach(function (table) { resyncUnlisted(table, fresh); });
        var book = document.querySelector("[data-resync-rows] #order-rows");
        if (!book || !added.length) return;
        added.reverse().forEach(function (row) {
          var node = document.importNode(row, true);
          book.prepend(node);
          htmx.process(node);
        });
        var empty = document.getElementById("orders-empty");
        if (empty) empty.remove();
      })
      .catch(function () {});
  }
  document.addEventListener("htmx:wsOpen", resyncRows);
  /* After a server restart the socket is tried again: htmx's default ("full-jitter") waits up to
     2^n seconds after the n-th failed try, so a page could stay without pushes for up to a minute
     once the server is back. A trading page waits at most 5 s, spread by jitter so that every open
     page does not knock at once. */
  htmx.config.wsReconnectDelay = function (retryCount) {
    var ceiling = Math.min(500 * Math.pow(2, retryCount), 5000);
    return ceiling / 2 + (ceiling / 2) * Math.random();
  };
  /* htmx's ws extension connects again only after an abnormal close (a dropped connection, 1006) or a
     server error, not after a normal one: daphne closes every socket a day after it opened (its
     websocket_timeout: 1000), and a server or proxy going away says 1001. A page left open overnight
     would stop getting pushes with no sign of it: it connects again (and reads itself again, above). A
     socket closed by the page itself (1005) or refused its session (4401) is left closed. */
  document.addEventListener("htmx:wsClose", function (evt) {
    var code = evt.detail && evt.detail.event && evt.detail.event.code;
    var socket = evt.detail && evt.detail.socketWrapper;
    if ((code !== 1000 && code !== 1001) || !socket || !socket.reconnect) return;
    setTimeout(function () {
      if (document.body.contains(evt.target) && evt.target.hasAttribute("ws-connect")) socket.reconnect();
    }, htmx.config.wsReconnectDelay(2));
  });
  /* A socket closed because its session ended (4401: a sign-out, a password change, which ends the
     other tabs' sessions of the browser too, an expired or replaced session) is not connected again:
     the page says its orders and PnL are no longer live, rather than showing them frozen as if they were. */
  document.addEventListener("htmx:wsClose", function (evt) {
    var code = evt.detail && evt.detail.event && evt.detail.event.code;
    var notices = document.getElementById("notices");
    if (code !== 4401 || !notices || document.getElementById("live-stopped")) return;
    var notice = document.createElement("div");
    notice.id = "live-stopped";
    notice.className = "notice notice-warning";
    notice.setAttribute("role", "alert");
    notice.textContent = "Live updates stopped: this page's sign-in ended (signed out, password changed or " +
      "expired). Reload the page to see current orders, positions and PnL.";
    notices.prepend(notice);
  });
  htmx.defineExtension("shown-targets", {
    transformResponse: function (text, xhr, elt) {
      var holder = document.createElement("template");
      holder.innerHTML = text;
      var pieces = Array.from(holder.content.children);
      if (xhr) {
        // An answer swaps in what was asked for; a row in it older than the page's stays as shown.
        var kept = pieces.filter(function (piece) { return piece.id && !older(piece) && keepNewerRows(piece); });
        var stale = [].concat.apply([], pieces.map(rows)).filter(older);
        if (!stale.length) return kept.length ? holder.innerHTML : text;
        stale.forEach(function (row) {
          row.replaceWith(onPage(row).cloneNode(true));
        });
        return holder.innerHTML;
      }
      pieces.forEach(function (piece) {
        var editing = piece.id && onPage(piece) && onPage(piece).classList.contains("editing");
        // A row open for editing keeps its form: a change meanwhile is caught when it is saved.
        if (!shown(piece) || editing || rows(piece).some(older)) {
          if (!shown(piece)) keepDropped(piece);
          piece.remove();
          return;
        }
        if (piece.id) keepNewerRows(piece);
        // A new order's row goes on top of the book; one the page already shows (read, or read again
        // when its socket opened, after the order was written) replaces its row instead of doubling it.
        if (!piece.id) {
          rows(piece).forEach(function (row) {
            var page = onPage(row);
            if (!page) {
              newestOf(row);
              return;
            }
            if (!page.classList.contains("editing")) {
              var node = document.importNode(row, true);
              page.replaceWith(node);
              htmx.process(node);
            }
            row.remove();
          });
          if (!piece.children.length) piece.remove();
        }
      });
      return holder.innerHTML;
    }
  });
})();
