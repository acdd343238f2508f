// The Talk page: ask through the device's own queue, and watch the answer grow.
// POST talk/ask answers JSON lines: {"started": {id, conversation}}, then
// {"chunk": "..."} as the text is made, then {"answer": {...}}. Stop asks the
// server to cancel (POST talk/stop) and, if the stream does not end soon, drops
// the connection, which cancels the question too. Follow-ups keep the
// conversation's id until "New conversation".
"use strict";

(function () {
  const form = document.querySelector("[data-ask]");
  if (!form) return;
  const chat = document.querySelector("[data-chat]");
  const input = form.querySelector("textarea");
  const stopButton = form.querySelector("[data-stop]");
  const sendButton = form.querySelector("[data-send]");
  const newButton = form.querySelector("[data-new]");
  let conversation = null;
  let asking = null; // {controller, id, timer}

  function bubble(kind, text) {
    document.querySelector("[data-hint]")?.remove();
    const item = document.createElement("li");
    item.className = kind;
    const body = document.createElement("p");
    body.className = "text";
    body.textContent = text;
    item.append(body);
    chat.append(item);
    item.scrollIntoView({ block: "end" });
    return item;
  }

  function meta(item, text, bad = false) {
    const line = document.createElement("p");
    line.className = bad ? "meta bad" : "meta";
    line.textContent = text;
    item.append(line);
  }

  function finish(item, answer) {
    const body = item.querySelector(".text");
    if (answer.text) body.textContent = answer.text; // an action's outcome replaces its JSON
    if (answer.conversation) conversation = answer.conversation;
    newButton.disabled = !conversation;
    if (answer.action) {
      const needs = answer.needs && answer.needs.length ? `, needs ${answer.needs.join(", ")}` : "";
      const reason = answer.reason ? ` (${answer.reason})` : "";
      meta(item, `Action ${answer.action}: ${answer.verdict}${reason}${needs}`,
           answer.verdict === "refused" || answer.verdict === "failed");
    }
    if (answer.sources && answer.sources.length) meta(item, `Sources: ${answer.sources.join(", ")}`);
    if (answer.error) meta(item, answer.error, true);
    else if (answer.finish_reason === "cancelled") meta(item, "Stopped.");
    else if (answer.finish_reason === "length") meta(item, "Cut short at the length limit.");
    else if (answer.finish_reason === "throttled") meta(item, "Shortened: the device is hot.");
  }

  function setBusy(busy) {
    sendButton.disabled = busy;
    stopButton.disabled = !busy;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || asking) return;
    input.value = "";
    bubble("question", text);
    const item = bubble("answer", "");
    item.setAttribute("aria-busy", "true");
    const current = asking = { controller: new AbortController(), id: null, timer: null };
    setBusy(true);
    try {
      const response = await Console.post("talk/ask", { text, conversation },
                                          { stream: true, signal: current.controller.signal });
      let answered = false;
      await Console.lines(response, (line) => {
        if (line.started) {
          current.id = line.started.id;
          conversation = line.started.conversation;
        } else if (line.chunk !== undefined) {
          item.querySelector(".text").textContent += line.chunk;
        } else if (line.answer) {
          answered = true;
          finish(item, line.answer);
        }
      });
      if (!answered) meta(item, "The answer was cut off.", true);
    } catch (error) {
      if (error.name === "AbortError") meta(item, "Stopped.");
      else meta(item, error.message, true);
    } finally {
      clearTimeout(current.timer);
      asking = null;
      item.removeAttribute("aria-busy");
      setBusy(false);
      input.focus();
    }
  });

  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  stopButton.addEventListener("click", async () => {
    const current = asking;
    if (!current) return;
    stopButton.disabled = true;
    current.timer = setTimeout(() => current.controller.abort(), 3000);
    if (!current.id) { current.controller.abort(); return; }
    try {
      const answer = await Console.post("talk/stop", { id: current.id });
      if (!answer.stopped) current.controller.abort();
    } catch (error) {
      current.controller.abort();
    }
  });

  newButton.addEventListener("click", () => {
    conversation = null;
    newButton.disabled = true;
    chat.replaceChildren();
    Console.notice("A new conversation starts with the next question.");
    input.focus();
  });
})();
