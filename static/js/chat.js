// Streams chat replies as server-sent events over a fetch POST; Stop aborts the request, which
// stops the generation on the server. Model text is inserted with textContent only; when the
// reply is complete the page reloads to show it as sanitised Markdown with its controls.
(function () {
  "use strict";
  const log = document.getElementById("chat-log");
  const form = document.getElementById("chat-form");
  if (!log || !form) return;
  const stopButton = document.getElementById("chat-stop");
  const sendButton = document.getElementById("chat-send");
  const errorBox = document.getElementById("chat-error");
  let controller = null;

  function bubble(role, text) {
    const article = document.createElement("article");
    article.className = `chat-msg chat-${role} streaming`;
    const header = document.createElement("header");
    const strong = document.createElement("strong");
    strong.textContent = role;
    header.appendChild(strong);
    const body = document.createElement("div");
    body.className = "plain";
    body.textContent = text;
    article.append(header, body);
    const empty = document.getElementById("chat-empty");
    if (empty) empty.remove();
    log.appendChild(article);
    article.scrollIntoView({ block: "end" });
    return body;
  }

  function showError(text) {
    errorBox.textContent = text;
    errorBox.hidden = false;
  }

  async function stream(target) {
    const data = new FormData(target);
    data.append("stream", "1");
    const question = data.get("content");
    if (question !== null) bubble("user", question);
    let reply = null;
    controller = new AbortController();
    sendButton.disabled = true;
    stopButton.hidden = false;
    errorBox.hidden = true;
    try {
      const response = await fetch(target.action, { method: "POST", body: data, signal: controller.signal });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        showError(body.detail || response.statusText);
        return;
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const kind = (block.match(/^event: (.*)$/m) || [])[1];
          const payload = JSON.parse((block.match(/^data: (.*)$/m) || [, "{}"])[1]);
          if (kind === "start" && payload.dropped) {
            showError(`The ${payload.dropped} oldest turns did not fit the context window and were left out.`);
          } else if (kind === "token") {
            if (!reply) reply = bubble("assistant", "");
            reply.textContent += payload.text;
          } else if (kind === "tool_call") {
            bubble("tool", `calling ${payload.name} ${JSON.stringify(payload.arguments)}`);
            reply = null;
          } else if (kind === "tool_result") {
            bubble("tool", payload.content);
          } else if (kind === "error") {
            showError(payload.message);
          }
        }
      }
    } catch (e) {
      if (e.name !== "AbortError") showError("The connection was lost; what arrived was saved.");
    } finally {
      controller = null;
      window.location.reload();
    }
  }

  document.addEventListener("submit", (event) => {
    const target = event.target.closest("form[data-stream]");
    if (!target || controller) return;
    event.preventDefault();
    stream(target);
  });
  stopButton.addEventListener("click", () => { if (controller) controller.abort(); });
  form.querySelector("textarea").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
})();
