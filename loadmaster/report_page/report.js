// The report's charts: reads the JSON block #report-data (built by
// loadmaster/html_report.py) and draws each chart with uPlot into its container.
// The tables are already in the page; nothing here writes markup from the data.
"use strict";

(function () {
  const DASH = "-";
  const HEIGHT = 240;
  // whole seconds only on the time axis
  const X_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400,
    43200, 86400];

  const data = JSON.parse(document.getElementById("report-data").textContent);
  const seconds = Array.from({ length: data.seconds }, (_, k) => k + 1);

  const fmt = (decimals) => (u, v) => (v == null ? DASH : v.toFixed(decimals));
  const fromZero = (u, min, max) => [0, max > 0 ? max * 1.05 : 1];

  function seriesOpts(spec, s) {
    const o = { label: s.label, stroke: s.color, width: 1.5, value: fmt(s.decimals) };
    if (s.dash) o.dash = [6, 4];
    if (s.scale) o.scale = s.scale;
    if (spec.kind === "points") {
      // a scatter: no line between the seconds, a dot for each
      o.paths = () => null;
      o.points = { show: true, size: 5, width: 1, stroke: s.color, fill: s.color };
    } else if (spec.kind === "distribution" && s.fill) {
      o.paths = uPlot.paths.stepped({ align: 1 });
      o.fill = s.color + "55";
      o.points = { show: false };
    }
    return o;
  }

  function options(spec, width) {
    const xDecimals = spec.kind === "distribution" ? 4 : 0;
    const x = { time: false };
    if (spec.kind === "distribution") {
      x.distr = 3;
      x.log = 10;
    } else if (spec.kind === "points") {
      x.range = fromZero;
    }
    const xAxis = { label: spec.xLabel, labelSize: 20 };
    if (spec.kind === "line") xAxis.incrs = X_STEPS;
    const axes = [xAxis, { label: spec.yLabel, labelSize: 20, size: 60 }];
    const scales = { x: x, y: { range: fromZero } };
    if (spec.y2Label) {
      scales.pct = { range: [0, 100] };
      axes.push({ scale: "pct", side: 1, label: spec.y2Label, labelSize: 20, size: 50,
        grid: { show: false } });
    }
    return {
      width: width,
      height: HEIGHT,
      scales: scales,
      axes: axes,
      // the charts over the run's seconds share one cursor
      cursor: spec.kind === "line" ? { sync: { key: "report-seconds" } } : {},
      series: [{ label: spec.xLabel, value: fmt(xDecimals) }]
        .concat(spec.series.map((s) => seriesOpts(spec, s))),
    };
  }

  const widthOf = (el) => Math.max(260, el.clientWidth || 0);
  const plots = [];
  for (const spec of data.charts) {
    const el = document.getElementById(spec.id);
    try {
      const columns = [spec.x === null ? seconds : spec.x].concat(spec.series.map((s) => s.values));
      plots.push({ el: el, plot: new uPlot(options(spec, widthOf(el)), columns, el) });
    } catch (err) {
      // the other charts are still drawn; the count below says how many were
      window.reportProblem("chart " + spec.id + ": " + (err && err.message ? err.message : err));
    }
  }
  document.body.dataset.charts = String(plots.length);

  let pending = false;
  window.addEventListener("resize", () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      for (const p of plots) p.plot.setSize({ width: widthOf(p.el), height: HEIGHT });
    });
  });
})();
