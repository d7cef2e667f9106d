/* cnnbench report: draws the Vega-Lite charts (lazily, when their section is open) and sorts tables. */
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);

  function narrow(spec, width) {
    /* A phone-wide chart gets one legend column and shorter labels. */
    if (width >= 560) return spec;
    var config = Object.assign({}, spec.config);
    config.legend = Object.assign({}, config.legend, { columns: 1, labelLimit: Math.max(120, width - 60) });
    config.axis = Object.assign({}, config.axis, { labelLimit: 110 });
    return Object.assign({}, spec, { config: config });
  }

  function render(el) {
    if (el.getAttribute("data-state")) return;
    var spec = data.charts[el.getAttribute("data-chart")];
    if (!spec) {
      el.setAttribute("data-state", "error");
      console.error("cnnbench report: no chart " + el.getAttribute("data-chart"));
      return;
    }
    el.setAttribute("data-state", "rendering");
    /* ast: expressions run in vega's interpreter, so the page needs no eval (see its CSP). */
    vegaEmbed(el, narrow(spec, el.clientWidth), { mode: "vega-lite", renderer: "svg", actions: false, ast: true })
      .then(function () { el.setAttribute("data-state", "rendered"); })
      .catch(function (error) {
        el.setAttribute("data-state", "error");
        el.textContent = "This chart could not be drawn: " + error.message;
        console.error(error);
      });
  }

  function renderVisible(root) {
    var charts = root.querySelectorAll(".chart");
    for (var i = 0; i < charts.length; i++) {
      if (charts[i].offsetParent !== null) render(charts[i]);
    }
  }

  var sections = document.querySelectorAll("details");
  for (var i = 0; i < sections.length; i++) {
    sections[i].addEventListener("toggle", function (event) {
      if (event.target.open) renderVisible(event.target);
    });
  }
  renderVisible(document);

  function sortKey(cell) {
    var value = cell.getAttribute("data-sort");
    if (value === null) return { number: null, text: cell.textContent.trim().toLowerCase() };
    return { number: value === "" ? null : parseFloat(value), text: "" };
  }

  function sortTable(table, column, button) {
    var th = button.parentNode;
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    var headers = table.querySelectorAll("thead th");
    for (var h = 0; h < headers.length; h++) headers[h].setAttribute("aria-sort", "none");
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = sortKey(a.cells[column]), y = sortKey(b.cells[column]);
      if (x.number === null && y.number === null && x.text === y.text) return 0;
      if (x.number === null && x.text === "") return 1; /* no value: always last */
      if (y.number === null && y.text === "") return -1;
      var order = x.number !== null && y.number !== null ? x.number - y.number : x.text < y.text ? -1 : x.text > y.text ? 1 : 0;
      return ascending ? order : -order;
    });
    for (var r = 0; r < rows.length; r++) body.appendChild(rows[r]);
  }

  var tables = document.querySelectorAll("table.sortable");
  for (var t = 0; t < tables.length; t++) {
    (function (table) {
      var buttons = table.querySelectorAll("thead th button");
      for (var b = 0; b < buttons.length; b++) {
        (function (button, column) {
          button.addEventListener("click", function () { sortTable(table, column, button); });
        })(buttons[b], b);
      }
    })(tables[t]);
  }
})();
