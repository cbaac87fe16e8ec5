// report.html's table of examples: filter rows by text, errors and a score limit; sort by a score column.
// The rows are in the page's HTML (it works without this script); this code reads them from the DOM and holds no data.
(function () {
  "use strict";
  var table = document.getElementById("ex-table");
  var controls = document.getElementById("ex-filter");
  if (!table || !controls) {
    return;
  }
  var body = table.tBodies[0];
  var headers = table.tHead.rows[0].cells;
  var rows = Array.prototype.slice.call(body.rows);
  var texts = rows.map(function (row) { return row.textContent.toLowerCase(); });
  var text = document.getElementById("ex-text");
  var errors = document.getElementById("ex-errors");
  var metric = document.getElementById("ex-metric");
  var most = document.getElementById("ex-max");
  var count = document.getElementById("ex-count");

  function value(row, column) {
    var v = row.cells[column].getAttribute("data-v");
    return v === null || v === "" ? NaN : Number(v);
  }

  function apply() {
    var needle = text.value.trim().toLowerCase();
    var column = metric ? Number(metric.value) : -1;
    var limit = most && most.value !== "" ? Number(most.value) : NaN;
    var shown = 0;
    rows.forEach(function (row, i) {
      var keep = (!needle || texts[i].indexOf(needle) !== -1) &&
        (!errors || !errors.checked || row.hasAttribute("data-error")) &&
        (isNaN(limit) || value(row, column) <= limit);
      row.hidden = !keep;
      shown += keep ? 1 : 0;
    });
    count.textContent = "showing " + shown + " of " + rows.length + " rows";
  }

  function sortBy(th, column) {
    var descending = th.getAttribute("aria-sort") === "ascending";
    Array.prototype.forEach.call(headers, function (other) { other.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", descending ? "descending" : "ascending");
    var order = rows.map(function (row, i) { return [value(row, column), i]; });
    order.sort(function (a, b) {
      if (isNaN(a[0]) !== isNaN(b[0])) {
        return isNaN(a[0]) ? 1 : -1; // rows without a value last
      }
      if (!isNaN(a[0]) && a[0] !== b[0]) {
        return descending ? b[0] - a[0] : a[0] - b[0];
      }
      return a[1] - b[1]; // ties in file order
    });
    order.forEach(function (pair) { body.appendChild(rows[pair[1]]); });
  }

  Array.prototype.forEach.call(headers, function (th, column) {
    if (!th.hasAttribute("data-sort")) {
      return;
    }
    var button = document.createElement("button");
    button.type = "button";
    button.title = "sort by " + th.textContent;
    button.textContent = th.textContent;
    th.textContent = "";
    th.appendChild(button);
    button.addEventListener("click", function () { sortBy(th, column); });
  });
  [text, most].forEach(function (input) { if (input) { input.addEventListener("input", apply); } });
  [errors, metric].forEach(function (input) { if (input) { input.addEventListener("change", apply); } });
  controls.hidden = false;
  apply();
}());
