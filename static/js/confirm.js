// A form that does what cannot be undone (a new webhook secret, a delete, a cancel, a revoke)
// carries data-confirm="question": it is sent only once the trader says yes. A static file: the
// Content-Security-Policy allows no inline handlers.
(function () {
  "use strict";
  document.addEventListener("submit", function (evt) {
    var form = evt.target;
    var question = form instanceof HTMLFormElement ? form.getAttribute("data-confirm") : null;
    if (question && !window.confirm(question)) {
      evt.preventDefault();
      evt.stopImmediatePropagation();
    }
  }, true);
})();
