// Small SVG line charts: no library, every label set with textContent.
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const W = 420, H = 160, L = 44, R = 8, T = 8, B = 20;

  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const k in attrs) node.setAttribute(k, String(attrs[k]));
    if (parent) parent.appendChild(node);
    return node;
  }

  function fmt(v) {
    if (v >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (v >= 1e3) return (v / 1e3).toFixed(1) + "k";
    return v >= 10 || v === 0 ? String(Math.round(v)) : v.toFixed(1);
  }

  // series: [{name, color, points: [[t seconds, value], ...]}]; the x axis is [t0, t1].
  function draw(host, series, t0, t1) {
    let max = 0;
    for (const s of series) for (const p of s.points) if (p[1] > max) max = p[1];
    max = max > 0 ? max * 1.1 : 1;
    const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
    const y = (v) => T + (1 - v / max) * (H - T - B);
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
    for (const f of [0, 0.5, 1]) {
      el("line", { x1: L, x2: W - R, y1: y(max * f), y2: y(max * f), class: "grid" }, svg);
      const label = el("text", { x: L - 4, y: y(max * f) + 4, class: "axis", "text-anchor": "end" }, svg);
      label.textContent = fmt(max * f);
    }
    const span = t1 - t0;
    const ago = span >= 120 ? "-" + Math.round(span / 60) + " min" : "-" + Math.round(span) + " s";
    for (const [t, text, anchor] of [[t0, ago, "start"], [t1, "now", "end"]]) {
      const label = el("text", { x: x(t), y: H - 4, class: "axis", "text-anchor": anchor }, svg);
      label.textContent = text;
    }
    for (const s of series) {
      if (!s.points.length) continue;
      const d = s.points.map((p, i) => (i ? "L" : "M") + x(p[0]).toFixed(1) + " " + y(p[1]).toFixed(1)).join(" ");
      el("path", { d, fill: "none", stroke: s.color, "stroke-width": 1.5 }, svg);
    }
    host.replaceChildren(svg);
  }

  window.aioredqCharts = { draw };
})();
