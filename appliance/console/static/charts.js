// A tiny SVG line chart of our own: no library, built with DOM APIs (the
// Content-Security-Policy allows no inline style in the HTML, but attributes set
// from a script are fine). Charts.draw(svg, points, options) redraws an <svg>
// of the page (whose namespace the new elements take) with a line of
// [t, value] points over [now - span, now]; a null value or a gap of more than
// two steps breaks the line.
"use strict";

(function () {
  const W = 320, H = 110, LEFT = 36, RIGHT = 6, TOP = 8, BOTTOM = 18;

  function el(svg, name, attrs, text) {
    const node = document.createElementNS(svg.namespaceURI, name);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function label(value) {
    if (Math.abs(value) >= 100) return value.toFixed(0);
    if (Math.abs(value) >= 10) return value.toFixed(1);
    return value.toFixed(2);
  }

  // Pairs of [t, v] into runs of consecutive points (broken at nulls and gaps).
  function runs(points, step) {
    const out = [];
    let run = [];
    let last = null;
    for (const [t, v] of points) {
      if (v === null || v === undefined || (last !== null && t - last > 2.5 * step)) {
        if (run.length) out.push(run);
        run = [];
      }
      if (v !== null && v !== undefined) run.push([t, v]);
      last = t;
    }
    if (run.length) out.push(run);
    return out;
  }

  function draw(svg, points, options) {
    const { now, span, step, unit, title } = options;
    const start = now - span;
    const shown = points.filter(([t]) => t >= start);
    const values = shown.map(([, v]) => v).filter((v) => v !== null && v !== undefined);
    let low = values.length ? Math.min(...values) : 0;
    let high = values.length ? Math.max(...values) : 1;
    if (options.zero) low = Math.min(low, 0);
    if (high - low < 1e-9) { high += 1; low -= options.zero && low >= 0 ? 0 : 1; }
    const x = (t) => LEFT + ((t - start) / span) * (W - LEFT - RIGHT);
    const y = (v) => TOP + (1 - (v - low) / (high - low)) * (H - TOP - BOTTOM);

    const latest = values.length ? `latest ${label(values[values.length - 1])} ${unit}` : "no data yet";
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("aria-label", `${title}: ${latest}`);
    const add = (name, attrs, text) => svg.append(el(svg, name, attrs, text));
    svg.replaceChildren();
    const axis = { stroke: "currentColor", "stroke-opacity": 0.25, "stroke-width": 1 };
    add("line", { x1: LEFT, y1: TOP, x2: W - RIGHT, y2: TOP, ...axis });
    add("line", { x1: LEFT, y1: H - BOTTOM, x2: W - RIGHT, y2: H - BOTTOM, ...axis });
    const text = { fill: "currentColor", "font-size": 10, "fill-opacity": 0.7 };
    add("text", { x: LEFT - 4, y: TOP + 4, "text-anchor": "end", ...text }, label(high));
    add("text", { x: LEFT - 4, y: H - BOTTOM + 3, "text-anchor": "end", ...text }, label(low));
    const ago = span >= 86400 ? "−24 h" : "−1 h";
    add("text", { x: LEFT, y: H - 4, ...text }, ago);
    add("text", { x: W - RIGHT, y: H - 4, "text-anchor": "end", ...text }, "now");
    for (const run of runs(shown, step)) {
      const coords = run.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
      if (run.length === 1) {
        const [t, v] = run[0];
        add("circle", { cx: x(t).toFixed(1), cy: y(v).toFixed(1), r: 1.8, fill: "currentColor" });
      } else {
        add("polyline", { points: coords, fill: "none", stroke: "currentColor",
                            "stroke-width": 1.6, "stroke-linejoin": "round" });
      }
    }
    if (!values.length) {
      add("text", { x: (W + LEFT) / 2, y: H / 2, "text-anchor": "middle", ...text }, "no data yet");
    }
  }

  window.Charts = { draw };
})();
