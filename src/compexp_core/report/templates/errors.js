document.addEventListener("error", function (event) {
  var t = event.target;
  if (t && t.tagName === "IMG") {
    console.error("compexp report: image failed to load: " + t.getAttribute("src"));
  }
}, true);
