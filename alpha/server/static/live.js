/* The /training page: live cards for active runs, fed by Server-Sent Events.
 * On connect the server sends a snapshot (recent runs with their newest steps); then every
 * ingest message is forwarded (run_start, metrics, heartbeat, samples, event(s), run_complete).
 * All text from the server is put in the page with textContent (never as HTML).
 */
"use strict";
(function () {
  const MAX_POINTS = 3000;
  const runs = new Map();
  const box = document.getElementById("runs");
  const tpl = document.getElementById("run-card");
  const fmt = window.fmtNum;

  function newState(id) {
    const el = tpl.content.firstElementChild.cloneNode(true);
    el.dataset.run = id;
    const link = el.querySelector(".run-id");
    link.textContent = id;
    link.href = "/runs/" + encodeURIComponent(id);
    box.appendChild(el);
    const canvas = (k) => el.querySelector(`canvas[data-chart="${k}"]`);
    const charts = {
      loss: new LineChart(canvas("loss"), {series: [
        {key: "loss", label: "loss", color: "#4ea1ff"},
        {key: "valLoss", label: "val loss", color: "#ffb347", dots: true, width: 2}]}),
      lr: new LineChart(canvas("lr"), {series: [{key: "lr", label: "lr", color: "#9b8cff"}]}),
      grad: new LineChart(canvas("grad"), {logY: true, series: [{key: "gradNorm", label: "grad norm", color: "#ff7a90"}]}),
      tps: new LineChart(canvas("tps"), {series: [{key: "tokens_per_sec", label: "tok/s", color: "#5fd08a"}]}),
    };
    return {id, run: {id}, metrics: new Map(), samples: null, alerts: [], el, charts, timer: null};
  }

  function state(id) {
    if (!runs.has(id)) runs.set(id, newState(id));
    return runs.get(id);
  }

  function addMetrics(s, records) {
    for (const r of records || []) {
      if (typeof r.step !== "number") continue;
      const row = Object.assign({}, r);
      if (row.valLoss === undefined && row.val_loss !== undefined) row.valLoss = row.val_loss;
      if (row.gradNorm === undefined && row.grad_norm !== undefined) row.gradNorm = row.grad_norm;
      s.metrics.set(row.step, row);
      if (row.step > (s.run.latest_step || 0)) s.run.latest_step = row.step;
    }
    if (s.metrics.size > MAX_POINTS) {
      const steps = [...s.metrics.keys()].sort((a, b) => a - b);
      for (const k of steps.slice(0, steps.length - MAX_POINTS)) s.metrics.delete(k);
    }
  }

  function schedule(s) {
    if (s.timer) return;
    s.timer = setTimeout(() => { s.timer = null; render(s); }, 80);
  }

  function lastOf(rows, key) {
    for (let i = rows.length - 1; i >= 0; i--) if (typeof rows[i][key] === "number") return rows[i][key];
    return null;
  }

  function mean(rows, key, n) {
    const v = rows.slice(-n).map((r) => r[key]).filter((x) => typeof x === "number");
    return v.length ? v.reduce((a, b) => a + b, 0) / v.length : null;
  }

  function render(s) {
    const el = s.el, run = s.run;
    const rows = [...s.metrics.values()].sort((a, b) => a.step - b.step);
    const stat = (k, v) => (el.querySelector(`[data-stat="${k}"]`).textContent = v);
    el.querySelector(".domain").textContent = run.domain || "—";
    const status = el.querySelector(".status");
    status.textContent = run.status || "active";
    status.className = "badge status status-" + (run.status || "active");
    el.querySelector(".params").textContent = run.total_params ? fmtParams(run.total_params) + " params" : "";
    const iters = run.total_iters, step = run.latest_step || 0;
    const bar = el.querySelector(".bar");
    bar.style.width = iters ? Math.min(100, (100 * step) / iters).toFixed(1) + "%" : "0";
    el.querySelector(".progress-text").textContent = iters ? `step ${step} / ${iters}` : `step ${step}`;
    const ms = mean(rows, "ms_per_iter", 10);
    el.querySelector(".eta").textContent = iters && ms && run.status === "active"
      ? `~${fmtDuration(((iters - step) * ms) / 1000)} remaining` : "";
    const vals = rows.map((r) => r.valLoss).filter((v) => typeof v === "number");
    stat("loss", fmt(lastOf(rows, "loss")));
    stat("val", fmt(lastOf(rows, "valLoss")));
    stat("bestval", vals.length ? " best " + fmt(Math.min(...vals)) : "");
    stat("lr", fmt(lastOf(rows, "lr")));
    stat("grad", fmt(lastOf(rows, "gradNorm")));
    stat("tps", fmt(mean(rows, "tokens_per_sec", 10)));
    stat("ms", fmt(ms));
    for (const chart of Object.values(s.charts)) chart.setRows(rows);

    const samplesBox = el.querySelector(".samples");
    samplesBox.replaceChildren();
    if (s.samples) {
      el.querySelector(".sample-step").textContent = `step ${s.samples.step}`;
      for (const sample of s.samples.samples.slice(0, 4)) {
        const d = document.createElement("div");
        d.className = "sample";
        const p = document.createElement("div"); p.className = "prompt"; p.textContent = sample.prompt;
        const o = document.createElement("div"); o.className = "output"; o.textContent = sample.output;
        d.append(p, o);
        samplesBox.appendChild(d);
      }
    } else {
      samplesBox.textContent = "none yet";
    }
    const alerts = el.querySelector(".alerts");
    alerts.replaceChildren();
    for (const a of s.alerts.slice(-8).reverse()) {
      const li = document.createElement("li");
      li.className = "level-" + a.level;
      li.textContent = `${a.step !== null && a.step !== undefined ? "step " + a.step + " · " : ""}${a.kind}: ${a.message}`;
      alerts.appendChild(li);
    }
    if (!s.alerts.length) alerts.textContent = "none";
    updateCount();
  }

  function fmtParams(n) {
    if (n >= 1e9) return (n / 1e9).toFixed(1) + "B";
    if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
    if (n >= 1e3) return (n / 1e3).toFixed(1) + "K";
    return String(n);
  }

  function fmtDuration(sec) {
    if (sec < 90) return Math.round(sec) + "s";
    if (sec < 5400) return Math.round(sec / 60) + "m";
    return (sec / 3600).toFixed(1) + "h";
  }

  function updateCount() {
    const active = [...runs.values()].filter((s) => (s.run.status || "active") === "active").length;
    document.getElementById("run-count").textContent = `${active} active · ${runs.size} shown`;
    document.getElementById("empty").hidden = runs.size > 0;
  }

  function addAlert(s, ev) {
    if (ev && (ev.level === "warn" || ev.level === "error")) {
      s.alerts.push(ev);
      if (s.alerts.length > 50) s.alerts.shift();
    }
  }

  const handlers = {
    snapshot(data) {
      runs.clear();
      box.replaceChildren();
      for (const run of data) {
        const s = state(run.id);
        s.run = run;
        addMetrics(s, run.metrics);
        const latest = (run.samples || [])[0];
        s.samples = latest ? {step: latest.step, samples: latest.samples} : null;
        s.alerts = (run.alerts || []).map((e) => ({level: e.level, kind: e.kind, message: e.message, step: e.step}));
        render(s);
      }
      updateCount();
    },
    run_start(d) {
      const s = state(d.runId);
      Object.assign(s.run, {domain: d.domain, status: "active", total_params: d.totalParams,
        total_iters: (d.trainConfig || {}).iters, model_config: d.modelConfig});
      schedule(s);
    },
    metrics(d) { const s = state(d.runId); s.run.status = s.run.status === "stale" ? "active" : s.run.status; addMetrics(s, d.metrics); schedule(s); },
    heartbeat(d) { const s = state(d.runId); if (d.step > (s.run.latest_step || 0)) s.run.latest_step = d.step; schedule(s); },
    samples(d) { const s = state(d.runId); s.samples = {step: d.step, samples: d.samples}; schedule(s); },
    event(d) { const s = state(d.runId); addAlert(s, d.event); schedule(s); },
    events(d) { const s = state(d.runId); for (const e of d.events) addAlert(s, e); schedule(s); },
    run_complete(d) { const s = state(d.runId); s.run.status = d.status || "completed"; schedule(s); },
  };

  function connect() {
    const pill = document.getElementById("conn");
    const es = new EventSource("/api/training/live");
    es.onopen = () => { pill.textContent = "connected"; pill.className = "pill ok"; };
    es.onerror = () => { pill.textContent = "reconnecting…"; pill.className = "pill warn"; };
    for (const [name, fn] of Object.entries(handlers)) {
      es.addEventListener(name, (e) => fn(JSON.parse(e.data)));
    }
  }

  connect();
})();
