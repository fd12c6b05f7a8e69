// Shows price only for LIMIT/SL and trigger only for SL/SL-M; a hidden input is disabled so it is not
// sent. The server is the authority: without this script every field shows and order_check judges.
(function () {
  function fitOrderType(form) {
    var type = form.querySelector("[name=order_type]");
    if (!type) return;
    var shown = {price: type.value === "LIMIT" || type.value === "SL", trigger_price: type.value === "SL" || type.value === "SL-M"};
    Object.keys(shown).forEach(function (name) {
      var box = form.querySelector("#field-" + name), input = form.querySelector("[name=" + name + "]");
      if (box) box.hidden = !shown[name];
      if (input) input.disabled = !shown[name];
    });
  }
  function bind(form) {
    if (form.dataset.bound) return;
    form.dataset.bound = "1";
    form.addEventListener("change", function (event) {
      if (event.target.name === "order_type") fitOrderType(form);
    });
    // One submit per ticket: a double click sends once (the one-time token makes a repeat harmless
    // anyway). An htmx form (the book's inline modify) disables its button while it is sent instead.
    if (!form.hasAttribute("hx-post")) {
      form.addEventListener("submit", function (event) {
        if (form.dataset.sent) event.preventDefault();
        form.dataset.sent = "1";
      });
    }
    fitOrderType(form);
  }
  function bindWithin(root) {
    if (root.matches && root.matches("form[data-order-form]")) bind(root);
    if (root.querySelectorAll) root.querySelectorAll("form[data-order-form]").forEach(bind);
  }
  // The forms on the page (above this script), and those htmx brings in later (the book's inline
  // modify): htmx:load bubbles to the document from each piece it swaps in. Listened for on the
  // document from here, so neither when htmx (deferred) starts nor DOMContentLoaded matters.
  bindWithin(document);
  document.addEventListener("htmx:load", function (event) {
    bindWithin(event.detail.elt);
    // A field the server put back (the ticket's order type for a newly chosen instrument: an option
    // takes SL, not SL-M): its form shows the prices the type now chosen takes.
    var form = event.detail.elt.closest && event.detail.elt.closest("form[data-order-form]");
    if (form && form.dataset.bound) fitOrderType(form);
  });
  // Enter in the instrument search chooses the first match instead of submitting the ticket.
  document.addEventListener("keydown", function (event) {
    if (event.key !== "Enter" || !event.target.matches("#instrument-search")) return;
    event.preventDefault();
    var first = document.querySelector("#instrument-options .option");
    if (first) first.click();
  });
  // An htmx request (the book's Cancel, an inline modify, the instrument search) the server answered
  // with an error (a 500, a proxy's 502 while it restarts) or never got (offline) swaps nothing in:
  // say so, or a Cancel clicked looks as if it were on its way while the order stays open.
  function failed(text) {
    var notices = document.getElementById("notices");
    if (!notices) return;
    var notice = document.createElement("div");
    notice.className = "notice notice-error";
    notice.setAttribute("role", "status");
    notice.textContent = text + ": what you asked may not have been done. Check the order before trying again.";
    notices.prepend(notice);
  }
  document.addEventListener("htmx:responseError", function (event) {
    failed("The server answered an error (" + event.detail.xhr.status + ")");
  });
  document.addEventListener("htmx:sendError", function () {
    failed("The server could not be reached");
  });
  window.addEventListener("pageshow", function () {
    document.querySelectorAll("form[data-order-form]").forEach(function (form) { delete form.dataset.sent; });
  });
})();
