// The Models page: start a pull that runs in the server, and follow its progress
// (models/pull, polled each second while it runs; reopening the page finds it).
"use strict";

(function () {
  const panel = document.getElementById("pull");
  const bar = document.getElementById("pull-progress");
  const cancel = document.getElementById("pull-cancel");
  const ACTIVE = new Set(["running", "cancelling"]);
  let timer = null;

  const mib = (n) => `${(n / 1048576).toFixed(1)} MiB`;

  function duration(s) {
    if (s == null) return "–";
    if (s < 90) return `${Math.round(s)} s`;
    if (s < 5400) return `${Math.round(s / 60)} min`;
    return `${(s / 3600).toFixed(1)} h`;
  }

  function show(pull) {
    if (!pull) return;
    panel.hidden = false;
    Console.fill({ pull });
    document.getElementById("pull-bytes").textContent =
      pull.total ? `${mib(pull.done)} of ${mib(pull.total)}` : mib(pull.done);
    document.getElementById("pull-rate").textContent = pull.rate ? `${mib(pull.rate)}/s` : "–";
    document.getElementById("pull-left").textContent = duration(pull.left_s);
    if (pull.total) { bar.max = pull.total; bar.value = pull.done; }
    else if (pull.state === "done") { bar.max = 1; bar.value = 1; }
    else bar.removeAttribute("value");
    cancel.hidden = !ACTIVE.has(pull.state);
    for (const button of document.querySelectorAll("[data-pull]")) button.disabled = ACTIVE.has(pull.state);
  }

  async function poll() {
    try {
      const response = await fetch("models/pull", { credentials: "same-origin" });
      if (!response.ok) return;
      const { pull } = await response.json();
      show(pull);
      if (!pull || !ACTIVE.has(pull.state)) {
        clearInterval(timer);
        timer = null;
        if (pull && pull.state === "done") {
          Console.notice(pull.line);
          const row = document.querySelector(`tr[data-model="${CSS.escape(pull.name)}"] [data-state]`);
          if (row) row.textContent = "verified";
        } else if (pull && pull.line) Console.notice(pull.line, pull.state === "failed" ? "error" : "info");
      }
    } catch (e) { /* the next poll tries again */ }
  }

  function follow() {
    if (!timer) timer = setInterval(poll, 1000);
    poll();
  }

  document.getElementById("models").addEventListener("click", async (event) => {
    const button = event.target.closest("[data-pull]");
    if (!button) return;
    try {
      show((await Console.post("models/pull", { name: button.dataset.pull })).pull);
      follow();
    } catch (error) {
      Console.notice(error.message, "error");
    }
  });

  cancel.addEventListener("click", async () => {
    try {
      show((await Console.post("models/pull/cancel", {})).pull);
    } catch (error) {
      Console.notice(error.message, "error");
    }
  });

  if (!panel.hidden) follow();
})();
