// The World page: the readings table, refreshed every few seconds while the
// page is visible (world/readings answers the same rows as the page).
"use strict";

(function () {
  const EVERY_MS = 5000;

  function cell(tag, text, className) {
    const el = document.createElement(tag);
    el.textContent = text;
    if (className) el.className = className;
    return el;
  }

  function kind(state) {
    if (state === "stale" || state === "missing") return "bad";
    return state === "fresh" ? "good" : "muted";
  }

  function row(r) {
    const tr = document.createElement("tr");
    tr.dataset.sensor = r.name;
    tr.dataset.state = r.state;
    const name = cell("th", r.name);
    name.scope = "row";
    const fields = document.createElement("td");
    fields.append(cell("code", r.fields));
    const age = cell("td", r.age);
    age.dataset.age = "";
    age.title = r.at;
    const fresh = cell("td", r.state || "not needed", kind(r.state));
    fresh.dataset.freshness = "";
    tr.append(name, fields, age, fresh, cell("td", r.need || "–"));
    return tr;
  }

  async function refresh() {
    if (document.hidden) return;
    try {
      const response = await fetch("world/readings", { credentials: "same-origin" });
      if (!response.ok) return;
      const { rows } = await response.json();
      const body = document.querySelector("[data-rows]");
      if (!rows.length) return;
      body.replaceChildren(...rows.map(row));
    } catch (error) {
      // offline for a moment: the next round tries again
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    setInterval(refresh, EVERY_MS);
    document.addEventListener("visibilitychange", refresh);
  });
})();
