// The page answers a POST: its address becomes the one in the script tag's data-address (same
// origin only), so a reload shows that page instead of sending the form again.
(function () {
  var script = document.currentScript, address = script && script.dataset.address;
  if (address && address.charAt(0) === "/" && address.charAt(1) !== "/") history.replaceState(null, "", address);
})();
