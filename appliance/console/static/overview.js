// The Overview page: live state over Server-Sent Events (events), and the
// charts of the last hour or day (history, then one point per sample event).
"use strict";

(function () {
  const rings = {};  // span -> the history's answer, kept up to date by samples
  let span = "hour";

  function showProblems(advice) {
    const box = document.querySelector("[data-problems]");
    if (!box || !Array.isArray(advice)) return;
    const list = box.querySelector("[data-list]");
    const items = advice.map((item) => {
      const li = document.createElement("li");
      const part = document.createElement("strong");
      part.className = "bad";
      part.textContent = item.part;
      const what = document.createElement("span");
      what.className = "muted";
      what.textContent = ` — ${item.advice}`;
      li.append(part, `: ${item.problem} `, what);
      return li;
    });
    list.replaceChildren(...items);
    box.querySelector("[data-none]").hidden = items.length > 0;
  }

  function onState(state) {
    Console.fill(state);
    for (const el of document.querySelectorAll("[data-kind-from]")) {
      const kind = state[el.dataset.kindFrom];
      if (kind) el.className = kind;
    }
    showProblems(state.advice);
  }

  function draw() {
    const ring = rings[span];
    if (!ring || !window.Charts) return;
    for (const figure of document.querySelectorAll("[data-chart]")) {
      const index = ring.series.indexOf(figure.dataset.chart) + 1;
      const points = ring.points.map((row) => [row[0], row[index]]);
      Charts.draw(figure.querySelector("svg"), points, {
        now: ring.now, span: ring.span_s, step: ring.step_s, unit: figure.dataset.unit,
        title: figure.querySelector("figcaption").textContent,
        zero: figure.dataset.chart !== "temp_c",
      });
    }
  }

  async function load(which) {
    const response = await fetch(`history?span=${which}`, { credentials: "same-origin" });
    if (!response.ok) return;
    rings[which] = await response.json();
    if (which === span) draw();
  }

  function onSample(sample) {
    const ring = rings[sample.span];
    if (!ring) return;
    const point = sample.point;
    ring.points.push(point);
    ring.now = point[0];
    const start = ring.now - ring.span_s;
    while (ring.points.length && ring.points[0][0] < start) ring.points.shift();
    if (sample.span === span) draw();
  }

  function choose(which) {
    span = which;
    for (const button of document.querySelectorAll("[data-span]")) {
      const on = button.dataset.span === which;
      button.setAttribute("aria-pressed", String(on));
      button.classList.toggle("secondary", !on);
    }
    if (rings[which]) draw(); else load(which);
  }

  document.addEventListener("DOMContentLoaded", () => {
    for (const button of document.querySelectorAll("[data-span]")) {
      button.addEventListener("click", () => choose(button.dataset.span));
    }
    Console.live("events", { state: onState, sample: onSample });
    load("hour");
  });
})();
