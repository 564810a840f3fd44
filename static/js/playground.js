// Streams playground samples as server-sent events over a POST (fetch + ReadableStream),
// appending one span per token. Model text is only ever inserted with textContent.
(function () {
  "use strict";
  const form = document.getElementById("playground-form");
  if (!form) return;
  const samples = document.getElementById("samples");
  const errorBox = document.getElementById("playground-error");
  const stopButton = document.getElementById("stop");
  const generateButton = document.getElementById("generate");
  let controller = null;

  function visible(text) {
    return text.replace(/\n/g, "↵").replace(/\t/g, "→");
  }

  function column(seq) {
    let article = samples.querySelector(`article[data-seq="${seq}"]`);
    if (!article) {
      article = document.createElement("article");
      article.className = "sample";
      article.dataset.seq = String(seq);
      const title = document.createElement("h3");
      title.textContent = `Sample ${seq + 1} `;
      const status = document.createElement("span");
      status.className = "muted";
      status.textContent = "generating…";
      title.appendChild(status);
      const tokens = document.createElement("p");
      tokens.className = "tokens stream";
      const prompt = document.createElement("span");
      prompt.className = "prompt";
      prompt.textContent = form.querySelector("[name=prompt]").value;
      tokens.appendChild(prompt);
      article.append(title, tokens);
      samples.appendChild(article);
    }
    return article;
  }

  function addToken(token) {
    const span = document.createElement("span");
    span.textContent = visible(token.text);
    const alternatives = token.top.map(([text, p]) => `${JSON.stringify(text)} ${p}`).join(" | ");
    span.title = `p=${token.p}${alternatives ? " | " + alternatives : ""}`;
    column(token.seq).querySelector(".tokens").appendChild(span);
  }

  function finish(payload) {
    for (const sample of payload.samples) {
      const status = column(sample.index).querySelector("h3 .muted");
      status.textContent = `${sample.finish_reason} · ${sample.tokens_per_second} tok/s`;
    }
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
  }

  function handle(block) {
    let kind = "message";
    let data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith("event: ")) kind = line.slice(7);
      else if (line.startsWith("data: ")) data += line.slice(6);
    }
    if (!data) return;
    const payload = JSON.parse(data);
    if (kind === "token") addToken(payload);
    else if (kind === "done") finish(payload);
    else if (kind === "error") showError(payload.message);
  }

  async function stream(event) {
    event.preventDefault();
    samples.replaceChildren();
    errorBox.hidden = true;
    controller = new AbortController();
    stopButton.hidden = false;
    generateButton.disabled = true;
    try {
      const response = await fetch(form.dataset.streamUrl, {
        method: "POST",
        body: new FormData(form),
        headers: { "X-CSRFToken": form.querySelector("[name=csrfmiddlewaretoken]").value },
        signal: controller.signal,
      });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        const retry = response.headers.get("Retry-After");
        showError(body.detail || JSON.stringify(body.errors || body) + (retry ? ` (retry in ${retry} s)` : ""));
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
          handle(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
        }
      }
    } catch (err) {
      if (err.name !== "AbortError") showError(String(err));
    } finally {
      stopButton.hidden = true;
      generateButton.disabled = false;
      controller = null;
    }
  }

  form.addEventListener("submit", stream);
  stopButton.addEventListener("click", () => controller && controller.abort());
})();
