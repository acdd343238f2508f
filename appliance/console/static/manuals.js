// The Manuals page: upload a file (sent as it is) and follow its indexing on a
// progress bar, list and remove the indexed manuals, search them. A refused file
// gets the server's one line in the notice; the list is then read again as it is.
"use strict";

(function () {
  const list = document.getElementById("manual-list");
  const empty = document.getElementById("manual-empty");
  const bar = document.getElementById("upload-progress");
  const stage = document.getElementById("upload-stage");
  const STAGES = { receiving: "Receiving", pages: "Reading pages", passages: "Embedding passages" };

  function item(doc) {
    const li = document.createElement("li");
    li.dataset.name = doc.name;
    const row = document.createElement("span");
    row.className = "row";
    const name = document.createElement("strong");
    name.textContent = doc.name;
    const facts = document.createElement("span");
    facts.className = "muted";
    const pages = doc.pages ? `, ${doc.pages} pages` : "";
    facts.textContent = `${doc.format}, ${doc.passages} passages${pages}, added ${doc.added.slice(0, 10)}`;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "secondary";
    remove.dataset.remove = doc.name;
    remove.setAttribute("aria-label", `Remove ${doc.name}`);
    remove.textContent = "Remove";
    row.append(name, facts, remove);
    li.append(row);
    return li;
  }

  async function refresh() {
    const response = await fetch("manuals/documents", { credentials: "same-origin" });
    if (!response.ok) return;
    const { documents } = await response.json();
    list.replaceChildren(...documents.map(item));
    empty.hidden = documents.length > 0;
  }

  const running = (job) => Boolean(job && job.stage && job.stage !== "done" && job.stage !== "failed");

  function show(job) {
    if (!running(job)) return;
    stage.hidden = bar.hidden = false;
    stage.textContent = `${STAGES[job.stage] || job.stage} ${job.name}`;
    if (job.total > 0) { bar.max = job.total; bar.value = job.done; }
    else bar.removeAttribute("value");  // indeterminate until the total is known
  }

  async function poll() {
    try {
      const response = await fetch("manuals/progress", { credentials: "same-origin" });
      if (!response.ok) return null;
      const job = await response.json();
      show(job);
      return job;
    } catch (e) { return null; }  // the next poll tries again
  }

  document.getElementById("upload-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    const file = form.elements.manual.files[0];
    if (!file) return;
    const button = form.querySelector("[type=submit]");
    button.disabled = true;
    Console.notice("");
    const timer = setInterval(poll, 500);
    try {
      const answer = await Console.post(`manuals/upload?name=${encodeURIComponent(file.name)}`, file);
      Console.notice(answer.notice);
      form.reset();
    } catch (error) {
      Console.notice(error.message, "error");
    } finally {
      clearInterval(timer);
      stage.hidden = bar.hidden = true;
      button.disabled = false;
      await refresh();
    }
  });

  list.addEventListener("click", async (event) => {
    const button = event.target.closest("[data-remove]");
    if (!button) return;
    button.disabled = true;
    try {
      Console.notice((await Console.post("manuals/remove", { name: button.dataset.remove })).notice);
    } catch (error) {
      Console.notice(error.message, "error");
    }
    await refresh();
  });

  document.getElementById("search-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const results = document.getElementById("search-results");
    const q = event.target.elements.q.value;
    const response = await fetch(`manuals/search?q=${encodeURIComponent(q)}`, { credentials: "same-origin" });
    const answer = await response.json();
    if (!response.ok) { Console.notice(answer.error, "error"); return; }
    if (!answer.passages.length) {
      const none = document.createElement("li");
      none.textContent = "No passage matches.";
      results.replaceChildren(none);
      return;
    }
    results.replaceChildren(...answer.passages.map((p) => {
      const li = document.createElement("li");
      const head = document.createElement("strong");
      head.textContent = `${p.doc}${p.page != null ? `, p. ${p.page}` : ""}: ${p.section}`;
      const score = document.createElement("span");
      const below = answer.min_score != null && p.score < answer.min_score;
      score.className = below ? "muted" : "good";
      score.textContent = ` score ${p.score.toFixed(3)}${below ? " (below knowledge.min_score)" : ""}`;
      score.dataset.score = p.score;
      const text = document.createElement("p");
      text.textContent = p.text.length > 400 ? `${p.text.slice(0, 400)} ...` : p.text;
      li.append(head, score, text);
      return li;
    }));
  });

  // An indexing started before this page was opened: follow it to its end.
  (async function resume() {
    if (!running(await poll())) return;
    const timer = setInterval(async () => {
      if (running(await poll())) return;
      clearInterval(timer);
      stage.hidden = bar.hidden = true;
      await refresh();
    }, 1000);
  })();
})();
