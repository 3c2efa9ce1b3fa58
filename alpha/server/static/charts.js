/* Small canvas line charts for the dashboard pages. No dependencies.
 *
 *   const chart = new LineChart(canvas, {series: [{key: "loss", label: "loss", color: "#4ea1ff"}]});
 *   chart.setRows([{step: 1, loss: 5.2}, ...]);   // rows sorted by x ("step" unless opts.x)
 *
 * Null / non-finite values are skipped; a series with `dots: true` also marks each point (eval
 * points are sparse). The canvas's data-points attribute holds how many points the first series
 * drew, which is handy to check from outside.
 */
"use strict";
(function (global) {
  function fmt(v) {
    if (v === null || v === undefined || !isFinite(v)) return "—";
    const a = Math.abs(v);
    if (a !== 0 && (a < 0.01 || a >= 1e6)) return v.toExponential(2);
    if (a >= 1000) return Math.round(v).toLocaleString("en-US");
    return Number(v.toPrecision(4)).toString();
  }

  // Round tick values (1, 2 or 5 times a power of ten) covering [lo, hi].
  function ticks(lo, hi, n, integer) {
    const raw = (hi - lo) / n;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const f = raw / mag;
    let step = (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
    if (integer) step = Math.max(1, Math.round(step));
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(v);
    return out;
  }

  // For a log10 axis: values 1, 2 and 5 times powers of ten inside [lo, hi] (log units).
  function logTicks(lo, hi) {
    const out = [];
    for (let e = Math.floor(lo); e <= Math.ceil(hi); e++) {
      for (const m of [1, 2, 5]) {
        const v = e + Math.log10(m);
        if (v >= lo && v <= hi) out.push(v);
      }
    }
    return out.length > 6 ? out.filter((v) => Math.abs(v - Math.round(v)) < 1e-9) : out;
  }

  class LineChart {
    constructor(canvas, opts) {
      this.canvas = canvas;
      this.series = opts.series;
      this.x = opts.x || "step";
      this.logY = !!opts.logY;
      this.rows = [];
      this.hoverX = null;
      canvas.addEventListener("mousemove", (e) => {
        const r = canvas.getBoundingClientRect();
        this.hoverX = e.clientX - r.left;
        this.draw();
      });
      canvas.addEventListener("mouseleave", () => {
        this.hoverX = null;
        this.draw();
      });
      if (global.ResizeObserver) new ResizeObserver(() => this.draw()).observe(canvas);
    }

    setRows(rows) {
      this.rows = rows;
      this.draw();
    }

    points(s) {
      const pts = [];
      for (const row of this.rows) {
        const x = row[this.x], y = row[s.key];
        if (typeof x !== "number" || typeof y !== "number" || !isFinite(y)) continue;
        if (this.logY && y <= 0) continue;
        pts.push([x, this.logY ? Math.log10(y) : y, y]);
      }
      return pts;
    }

    draw() {
      const c = this.canvas, dpr = global.devicePixelRatio || 1;
      const w = c.clientWidth || 300, h = c.clientHeight || 160;
      if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
        c.width = Math.round(w * dpr);
        c.height = Math.round(h * dpr);
      }
      const g = c.getContext("2d");
      g.setTransform(dpr, 0, 0, dpr, 0, 0);
      g.clearRect(0, 0, w, h);
      const css = getComputedStyle(document.documentElement);
      const ink = css.getPropertyValue("--muted").trim() || "#888";
      const grid = css.getPropertyValue("--grid").trim() || "#333";
      g.font = "11px system-ui, sans-serif";

      const all = this.series.map((s) => this.points(s));
      c.dataset.points = String(all.length ? all[0].length : 0);
      const flat = all.flat();
      if (!flat.length) {
        g.fillStyle = ink;
        g.fillText("no data yet", w / 2 - 28, h / 2);
        return;
      }
      let x0 = Math.min(...flat.map((p) => p[0])), x1 = Math.max(...flat.map((p) => p[0]));
      let y0 = Math.min(...flat.map((p) => p[1])), y1 = Math.max(...flat.map((p) => p[1]));
      if (x0 === x1) { x0 -= 1; x1 += 1; }
      if (y0 === y1) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
      const pad = (y1 - y0) * 0.06;
      const nonNegative = !this.logY && y0 >= 0;
      y0 -= pad; y1 += pad;
      if (nonNegative && y0 < 0) y0 = 0;
      const L = 54, R = 10, T = 12, B = 20;
      const sx = (x) => L + ((x - x0) / (x1 - x0)) * (w - L - R);
      const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (h - T - B);

      g.strokeStyle = grid;
      g.fillStyle = ink;
      g.lineWidth = 1;
      for (const y of this.logY ? logTicks(y0, y1) : ticks(y0, y1, 4, false)) {
        g.beginPath(); g.moveTo(L, sy(y)); g.lineTo(w - R, sy(y)); g.stroke();
        g.fillText(fmt(this.logY ? Math.pow(10, y) : y), 4, sy(y) + 4);
      }
      for (const x of ticks(x0, x1, 5, true)) {
        const label = fmt(x);
        const tw = g.measureText(label).width;
        g.fillText(label, Math.min(w - R - tw, Math.max(L, sx(x) - tw / 2)), h - 5);
      }

      this.series.forEach((s, i) => {
        const pts = all[i];
        g.strokeStyle = s.color;
        g.fillStyle = s.color;
        g.lineWidth = s.width || 1.5;
        g.setLineDash(s.dash ? [5, 4] : []);
        g.beginPath();
        pts.forEach((p, j) => (j ? g.lineTo(sx(p[0]), sy(p[1])) : g.moveTo(sx(p[0]), sy(p[1]))));
        g.stroke();
        g.setLineDash([]);
        if (s.dots || pts.length < 2) {
          for (const p of pts) { g.beginPath(); g.arc(sx(p[0]), sy(p[1]), 2.5, 0, 2 * Math.PI); g.fill(); }
        }
      });

      if (this.series.length > 1) {
        let lx = w - R;
        for (const s of [...this.series].reverse()) {
          const tw = g.measureText(s.label).width;
          lx -= tw + 18;
          g.fillStyle = s.color;
          g.fillRect(lx, 4, 10, 3);
          g.fillStyle = ink;
          g.fillText(s.label, lx + 13, 10);
        }
      }

      if (this.hoverX !== null && this.hoverX >= L) {
        const xv = x0 + ((this.hoverX - L) / (w - L - R)) * (x1 - x0);
        const lines = [];
        let nearest = null;
        this.series.forEach((s, i) => {
          let best = null;
          for (const p of all[i]) if (!best || Math.abs(p[0] - xv) < Math.abs(best[0] - xv)) best = p;
          if (best) {
            nearest = nearest === null ? best[0] : nearest;
            lines.push(`${s.label} ${fmt(best[2])} @${best[0]}`);
          }
        });
        if (nearest !== null) {
          g.strokeStyle = ink;
          g.beginPath(); g.moveTo(sx(nearest), T); g.lineTo(sx(nearest), h - B); g.stroke();
          const bw = Math.max(...lines.map((t) => g.measureText(t).width)) + 10;
          const bx = Math.min(w - R - bw, sx(nearest) + 6);
          g.fillStyle = "rgba(20,22,28,0.9)";
          g.fillRect(bx, T, bw, 14 * lines.length + 6);
          g.fillStyle = "#eee";
          lines.forEach((t, i) => g.fillText(t, bx + 5, T + 14 * (i + 1)));
        }
      }
    }
  }

  global.LineChart = LineChart;
  global.fmtNum = fmt;
})(window);
