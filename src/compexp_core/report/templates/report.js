(function () {
  "use strict";
  var container = document.getElementById("cards");
  var cards = Array.prototype.slice.call(container.querySelectorAll("article.card"));
  var sortSelect = document.getElementById("sort");
  var categorySelect = document.getElementById("category");
  var count = document.getElementById("count");
  var info = cards.map(function (card) {
    return {card: card, unit: Number(card.getAttribute("data-unit")),
            iou: Number(card.getAttribute("data-iou")),
            categories: JSON.parse(card.getAttribute("data-categories"))};
  });
  var orders = {
    "iou-desc": function (a, b) { return b.iou - a.iou || a.unit - b.unit; },
    "iou-asc": function (a, b) { return a.iou - b.iou || a.unit - b.unit; },
    "unit": function (a, b) { return a.unit - b.unit; }
  };
  function hasOption(select, value) {
    return Array.prototype.some.call(select.options, function (o) { return o.value === value; });
  }
  function readHash() {
    var state = {};
    location.hash.replace(/^#/, "").split("&").forEach(function (part) {
      var i = part.indexOf("=");
      if (i > 0) {
        try {
          state[decodeURIComponent(part.slice(0, i))] = decodeURIComponent(part.slice(i + 1));
        } catch (e) { /* a malformed hash is ignored */ }
      }
    });
    if (state.sort && hasOption(sortSelect, state.sort)) { sortSelect.value = state.sort; }
    if (state.category !== undefined && hasOption(categorySelect, state.category)) {
      categorySelect.value = state.category;
    }
  }
  function apply(updateHash) {
    var order = orders[sortSelect.value] || orders["iou-desc"];
    var category = categorySelect.value;
    var shown = 0;
    info.slice().sort(order).forEach(function (item) {
      var match = category === "" || item.categories.indexOf(category) >= 0;
      item.card.hidden = !match;
      shown += match ? 1 : 0;
      container.appendChild(item.card);
    });
    count.textContent = "showing " + shown + " of " + info.length + " units";
    if (updateHash) {
      var hash = "#sort=" + encodeURIComponent(sortSelect.value) +
                 (category ? "&category=" + encodeURIComponent(category) : "");
      try { history.replaceState(null, "", hash); } catch (e) { location.hash = hash; }
    }
    document.body.setAttribute("data-ready", "1");
  }
  sortSelect.addEventListener("change", function () { apply(true); });
  categorySelect.addEventListener("change", function () { apply(true); });
  window.addEventListener("hashchange", function () { readHash(); apply(false); });
  readHash();
  apply(false);
})();
