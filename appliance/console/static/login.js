// The login and first-run forms: posted before any session exists, so their CSRF
// token is the pre-session one that the page carries (form[data-token], also in a
// cookie: double submit). Hand it to console.js, which sends the meta tag's token.
"use strict";

(function () {
  const form = document.querySelector("form[data-token]");
  const meta = document.querySelector('meta[name="csrf-token"]');
  if (form && meta) meta.content = form.dataset.token;
})();
