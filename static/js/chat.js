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

  // After Stop the server only notices the closed connection at its next token, and then saves
  // what was generated; reloading before that would take the stopped reply off the page.
  async function untilSaved(question) {
    for (let tries = 0; tries < 20; tries++) {
      await new Promise((resolve) => setTimeout(resolve, 250));
      const page = await fetch(window.location.href, { cache: "no-store" }).catch(() => null);
      if (!page || !page.ok) return;
      const html = new DOMParser().parseFromString(await page.text(), "text/html");
      const shown = html.getElementById(`msg-${question}`);
      if (!shown || shown.nextElementSibling) return;
    }
  }

  async function stream(target) {
    const data = new FormData(target);
    data.append("stream", "1");
    const question = data.get("content");
    if (question !== null) bubble("user", question);
    let reply = null;
    let asked = null;
    let arrived = false;
    let stopped = false;
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
          // Lines end at "\n" only: model text may hold U+2028/U+2029, which a regex's "." and
          // "$" treat as line ends.
          const lines = block.split("\n");
          const kind = (lines.find((line) => line.startsWith("event: ")) || "").slice(7);
          const data = lines.find((line) => line.startsWith("data: "));
          const payload = JSON.parse(data ? data.slice(6) : "{}");
          if (kind === "start") {
            asked = payload.question;
            if (payload.dropped) showError(`The ${payload.dropped} oldest turns did not fit the context window and were left out.`);
          } else if (kind === "token") {
            arrived = true;
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
      if (e.name === "AbortError") stopped = true;
      else showError("The connection was lost; what arrived was saved.");
    } finally {
      stopButton.disabled = true;
      if (stopped && arrived && asked !== null) await untilSaved(asked);
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
