(function () {
  // A pushed change replaces the summary row; the details, the timeline and the actions follow it
  // (read again from this page; a modify form the order can no longer take goes away).
  var table = document.getElementById("order-summary"), summary = table && table.querySelector("tbody");
  var followUrl = table && table.dataset.followUrl;
  if (!summary || !followUrl || !window.MutationObserver || !window.fetch) return;
  var reading = false, again = false;
  function follow() {
    if (reading) { again = true; return; }
    reading = true;
    fetch(followUrl, {credentials: "same-origin"})
      .then(function (answer) { return answer.ok ? answer.text() : null; })
      .then(function (html) {
        if (!html) return;
        var fresh = new DOMParser().parseFromString(html, "text/html");
        ["order-fields", "timeline"].forEach(function (id) {
          var shown = document.getElementById(id), next = fresh.getElementById(id);
          if (shown && next) shown.replaceWith(next);
        });
        var modify = document.getElementById("modify");
        if (modify && !fresh.getElementById("modify")) modify.remove();
      })
      .catch(function () {})
      .then(function () { reading = false; if (again) { again = false; follow(); } });
  }
  new MutationObserver(follow).observe(summary, {childList: true});
  // The order's children (its stop-loss and take-profit, placed after it filled) and its parent have
  // no row on this page: their pushes are dropped, and the children listed here (placed, filled,
  // cancelled) and the parent's status would stay as the page was loaded. A push with one of them
  // reads the page again too.
  var mine = table.dataset.order, parent = table.dataset.parent;
  if (!mine) return;
  var related = 'tr[data-parent="' + mine + '"]' + (parent ? ", tr#order-" + parent : "");
  document.addEventListener("htmx:wsBeforeMessage", function (evt) {
    var message = evt.detail && evt.detail.message;
    if (typeof message !== "string" || message.indexOf("order-") < 0) return;
    var holder = document.createElement("template");
    holder.innerHTML = message;
    if (holder.content.querySelector(related)) follow();
  });
})();
