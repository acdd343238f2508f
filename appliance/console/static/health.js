// The Health page: the doctor table, and the log tail over Server-Sent Events
// (health/log?level=...), newest line first, at most MAX lines kept on the page.
"use strict";

(function () {
  const MAX = 300;
  const CLASS = { ok: "good", warn: "warn", fail: "bad", warning: "warn", error: "bad", critical: "bad" };
  const lines = document.getElementById("log-lines");
  const level = document.getElementById("level");
  let source = null;
  let last = 0;  // a reconnected stream sends the kept lines again: show each once

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  async function runChecks() {
    const body = document.querySelector("#checks tbody");
    const button = document.getElementById("run-checks");
    button.disabled = true;
    try {
      const response = await fetch("health/checks", { credentials: "same-origin" });
      const answer = await response.json();
      if (!response.ok) throw new Error(answer.error || response.statusText);
      body.replaceChildren(...answer.checks.map((check) => {
        const tr = document.createElement("tr");
        tr.dataset.check = check.name;
        tr.append(cell(check.name), cell(check.status, CLASS[check.status]), cell(check.detail));
        return tr;
      }));
    } catch (error) {
      Console.notice(error.message, "error");
    } finally {
      button.disabled = false;
    }
  }

  function add(line) {
    if (line.seq <= last) return;
    last = line.seq;
    const tr = document.createElement("tr");
    const fields = Object.entries(line.fields || {}).map(([k, v]) => `${k}=${v}`).join(" ");
    tr.append(cell(line.timestamp.slice(11, 19)), cell(line.level, CLASS[line.level]),
              cell(line.component), cell(fields ? `${line.event} ${fields}` : line.event));
    lines.prepend(tr);
    while (lines.children.length > MAX) lines.lastElementChild.remove();
  }

  function follow() {
    if (source) source.close();
    lines.replaceChildren();
    last = 0;
    source = Console.live(`health/log?level=${encodeURIComponent(level.value)}`, { log: add });
  }

  document.getElementById("run-checks").addEventListener("click", runChecks);
  level.addEventListener("change", follow);
  document.getElementById("log-form").addEventListener("submit", (event) => event.preventDefault());
  runChecks();
  follow();
})();
