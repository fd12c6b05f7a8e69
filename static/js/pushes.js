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
  htmx.defineExtension("shown-targets", {
    transformResponse: function (text, xhr, elt) {
      if (xhr) return text; // only pushes: an ordinary answer is what was asked for
      var holder = document.createElement("template");
      holder.innerHTML = text;
      Array.from(holder.content.children).forEach(function (piece) {
        if (!shown(piece)) piece.remove();
      });
      return holder.innerHTML;
    }
  });
})();
