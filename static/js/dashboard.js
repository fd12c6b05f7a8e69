/* The dashboard's PnL chart (uPlot, vendored). The server renders today's points into
 * #pnl-series (JSON: [unix seconds, "total"]) and the latest point into #pnl-summary's
 * data-point-* attributes. Live pushes swap #pnl-summary in: its point is appended. A
 * websocket (re)connect fetches #pnl-series afresh: the chart is redrawn from it. */
(function () {
  "use strict";

  var HEIGHT = 220;
  var chart = null;
  var xs = [];
  var ys = [];
  var seriesEl = null;

  function chartEl() { return document.getElementById("pnl-chart"); }

  function money(value) { return value == null ? "–" : value.toFixed(2); }

  function options(el) {
    var zone = el.dataset.timezone || "Asia/Kolkata";
    return {
      width: Math.max(el.clientWidth, 200),
      height: HEIGHT,
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1e3), zone); },
      scales: { x: { time: true } },
      series: [
        {},
        { label: "Total PnL", stroke: "#1f5eff", width: 2, fill: "rgba(31, 94, 255, 0.08)", value: function (u, v) { return money(v); } }
      ],
      axes: [{}, { size: 70 }]
    };
  }

  /* A new #pnl-series element (first load or resync) replaces every point. */
  function readSeries() {
    var el = document.getElementById("pnl-series");
    if (!el || el === seriesEl) return false;
    seriesEl = el;
    var points = JSON.parse(el.textContent);
    xs = points.map(function (p) { return p[0]; });
    ys = points.map(function (p) { return parseFloat(p[1]); });
    return true;
  }

  /* The pushed summary's point: appended when newer, replacing the last when at the same time. */
  function readPoint() {
    var el = document.getElementById("pnl-summary");
    if (!el || !el.dataset.pointTime) return false;
    var t = Number(el.dataset.pointTime);
    var v = parseFloat(el.dataset.pointTotal);
    var n = xs.length;
    if (n && t < xs[n - 1]) return false;
    if (n && t === xs[n - 1]) {
      if (ys[n - 1] === v) return false;
      ys[n - 1] = v;
      return true;
    }
    xs.push(t);
    ys.push(v);
    return true;
  }

  function draw() {
    var el = chartEl();
    var empty = document.getElementById("pnl-chart-empty");
    if (empty) empty.hidden = xs.length > 0;
    if (!el || !xs.length || typeof uPlot === "undefined") return;
    if (chart === null) {
      chart = new uPlot(options(el), [xs, ys], el);
    } else {
      chart.setData([xs, ys]);
    }
  }

  function sync() {
    var replaced = readSeries();
    var appended = readPoint();
    if (replaced || appended) draw();
  }

  function start() {
    if (!chartEl()) return;
    sync();
    document.addEventListener("htmx:oobAfterSwap", sync);
    document.addEventListener("htmx:wsAfterMessage", sync);
    window.addEventListener("resize", function () {
      var el = chartEl();
      if (chart && el) chart.setSize({ width: Math.max(el.clientWidth, 200), height: HEIGHT });
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
