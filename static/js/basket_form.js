// Another empty row without a save: the formset's empty form under the next index. Without this
// script the page still gives one empty row on each save.
(function () {
  var button = document.getElementById("add-basket-item");
  var template = document.getElementById("basket-item-template");
  var total = document.querySelector("[name=items-TOTAL_FORMS]");
  var most = document.querySelector("[name=items-MAX_NUM_FORMS]");
  if (!button || !template || !total) return;
  button.hidden = false;
  button.addEventListener("click", function () {
    var index = parseInt(total.value, 10);
    if (most && index >= parseInt(most.value, 10)) return;
    var html = template.innerHTML.replace(/__prefix__/g, String(index));
    document.querySelector("#basket-items tbody").insertAdjacentHTML("beforeend", html);
    total.value = String(index + 1);
    var first = document.querySelector("#basket-items tbody tr:last-child input, #basket-items tbody tr:last-child select");
    if (first) first.focus();
  });
})();
