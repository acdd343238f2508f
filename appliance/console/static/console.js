// The console's shared script: JSON posts with the CSRF token, live updates over
// Server-Sent Events, and filling [data-field] elements. Each page adds its own
// small script on top (static/<page>.js). No inline script anywhere: the
// Content-Security-Policy is default-src 'self'.
"use strict";

(function () {
  const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";

  // POST JSON (or a Blob/File as-is) and return the parsed answer; a refusal
  // throws an Error whose message is the server's one line.
  async function post(url, body, options = {}) {
    const raw = body instanceof Blob;
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "X-CSRF-Token": csrf(),
        "Content-Type": raw ? "application/octet-stream" : "application/json",
        ...(options.headers || {}),
      },
      body: raw ? body : JSON.stringify(body ?? {}),
      signal: options.signal,
    });
    if (options.stream) {
      if (!response.ok) throw new Error(await errorOf(response));
      return response;
    }
    const text = await response.text();
    let data = {};
    try { data = text ? JSON.parse(text) : {}; } catch (e) { data = { error: text }; }
    if (!response.ok) throw new Error(data.error || response.statusText);
    return data;
  }

  async function errorOf(response) {
    try { return (await response.json()).error || response.statusText; }
    catch (e) { return response.statusText; }
  }

  // Read a streamed answer of JSON lines, calling onLine for each parsed line.
  async function lines(response, onLine) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, end).trim();
        buffer = buffer.slice(end + 1);
        if (line) onLine(JSON.parse(line));
      }
    }
  }

  // Subscribe to a Server-Sent Events stream: handlers maps event names to
  // functions of the parsed data. The browser reconnects by itself.
  function live(url, handlers) {
    const source = new EventSource(url);
    for (const [name, handler] of Object.entries(handlers)) {
      source.addEventListener(name, (event) => handler(JSON.parse(event.data)));
    }
    source.addEventListener("open", () => setOffline(false));
    source.addEventListener("error", () => setOffline(true));
    return source;
  }

  function setOffline(offline) {
    document.body.classList.toggle("offline", offline);
  }

  function pick(data, path) {
    return path.split(".").reduce((v, key) => (v == null ? undefined : v[key]), data);
  }

  // Set every [data-field="a.b"] under root to data.a.b (absent keys are left alone).
  function fill(data, root = document) {
    for (const el of root.querySelectorAll("[data-field]")) {
      const value = pick(data, el.dataset.field);
      if (value === undefined) continue;
      el.textContent = format(value, el.dataset.digits);
    }
  }

  function format(value, digits) {
    if (value === null) return "–";
    if (typeof value === "number" && digits !== undefined) return value.toFixed(Number(digits));
    return String(value);
  }

  function notice(text, kind = "info") {
    const el = document.querySelector("[data-notice]");
    if (!el) return;
    el.textContent = text;
    el.dataset.kind = kind;
    el.hidden = !text;
  }

  // <form data-post>: sent as JSON; the answer may redirect or say something.
  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-post")) return;
    event.preventDefault();
    const body = Object.fromEntries(new FormData(form).entries());
    const button = form.querySelector("[type=submit]");
    if (button) button.disabled = true;
    try {
      const answer = await post(form.getAttribute("action"), body);
      form.dispatchEvent(new CustomEvent("posted", { detail: answer }));
      if (answer.redirect !== undefined) window.location.href = answer.redirect || "./";
      else if (answer.notice) notice(answer.notice);
    } catch (error) {
      notice(error.message, "error");
    } finally {
      if (button) button.disabled = false;
    }
  });

  window.Console = { post, lines, live, fill, format, notice };
})();
