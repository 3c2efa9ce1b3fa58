/* The /runs/{id} page: charts over the whole run (server-downsampled), the symbio generation
 * chart, and live appends of new steps while the run is active. */
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("run-data").textContent);
  const rows = new Map(data.series.map((r) => [r.step, r]));
  const canvas = (k) => document.querySelector(`canvas[data-chart="${k}"]`);
  const charts = [
    new LineChart(canvas("loss"), {series: [
      {key: "loss", label: "loss", color: "#4ea1ff"},
      {key: "val_loss", label: "val loss", color: "#ffb347", dots: true, width: 2}]}),
    new LineChart(canvas("lr"), {series: [{key: "lr", label: "lr", color: "#9b8cff"}]}),
    new LineChart(canvas("grad"), {logY: true, series: [{key: "grad_norm", label: "grad norm", color: "#ff7a90"}]}),
    new LineChart(canvas("tps"), {series: [{key: "tokens_per_sec", label: "tok/s", color: "#5fd08a"}]}),
    new LineChart(canvas("ms"), {series: [{key: "ms_per_iter", label: "ms/iter", color: "#e0c050"}]}),
  ];
  function redraw() {
    const sorted = [...rows.values()].sort((a, b) => a.step - b.step);
    for (const c of charts) c.setRows(sorted);
  }
  redraw();

  const genCanvas = canvas("generations");
  if (genCanvas) {
    new LineChart(genCanvas, {x: "generation", series: [
      {key: "best_val_loss", label: "best val", color: "#5fd08a", dots: true},
      {key: "mean_val_loss", label: "mean val", color: "#9b8cff", dots: true, dash: true}]}).setRows(data.generations);
  }

  if (data.status === "active" || data.status === "stale") {
    let timer = null;
    const es = new EventSource("/api/training/live");
    es.addEventListener("metrics", (e) => {
      const d = JSON.parse(e.data);
      if (d.runId !== data.runId) return;
      for (const r of d.metrics) {
        rows.set(r.step, {step: r.step, loss: r.loss, val_loss: r.valLoss ?? r.val_loss, lr: r.lr,
          grad_norm: r.gradNorm ?? r.grad_norm, tokens_per_sec: r.tokens_per_sec, ms_per_iter: r.ms_per_iter});
      }
      if (!timer) timer = setTimeout(() => { timer = null; redraw(); }, 250);
    });
    es.addEventListener("run_complete", (e) => {
      const d = JSON.parse(e.data);
      if (d.runId !== data.runId) return;
      const badge = document.getElementById("run-status");
      badge.textContent = d.status;
      badge.className = "badge status-" + d.status;
      es.close();
    });
  }
})();
