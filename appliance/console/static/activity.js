// The Activity page: Yes and No to the actions that wait for a confirmation.
// Each answer goes through the same confirmation path as voice and MQTT
// (POST activity/confirm); the question leaves the list once it is answered.
"use strict";

(function () {
  document.addEventListener("click", async (event) => {
    const button = event.target instanceof Element ? event.target.closest("[data-confirm]") : null;
    if (!button) return;
    const item = button.closest("[data-waiting]");
    const buttons = item ? item.querySelectorAll("[data-confirm]") : [button];
    for (const b of buttons) b.disabled = true;
    try {
      const answer = await Console.post("activity/confirm", {
        id: button.dataset.id, answer: button.dataset.confirm,
      });
      Console.notice(answer.notice || "Answered.");
      if (item) item.remove();
    } catch (error) {
      Console.notice(error.message, "error");
      for (const b of buttons) b.disabled = false;
    }
  });
})();
