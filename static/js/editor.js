// The conversation editor, on top of a form that already works without JavaScript.
// Adds: turn add/move/delete in place, shortcuts, character counts, Markdown preview, the live
// ChatML view, model drafts, autosave every few seconds and on leaving, and a copy of the text in
// localStorage so that a crash or an expired session never loses what was typed.
// Text is only ever put in the page with .value/.textContent; HTML from the server (preview,
// ChatML view) is rendered and sanitised there.
(function () {
  "use strict";
  const form = document.getElementById("editor");
  if (!form || form.dataset.editable !== "1") return;

  const AUTOSAVE_MS = 4000;
  const turnsBox = document.getElementById("turns");
  const template = document.getElementById("turn-template");
  const versionInput = form.querySelector("input[name=version]");
  const saveState = document.getElementById("save-state");
  const chatml = document.getElementById("chatml");
  const storageKey = form.dataset.storageKey;
  const csrf = form.querySelector("input[name=csrfmiddlewaretoken]").value;
  let dirty = false;
  let saving = false;
  let submitAfterSave = null; // {submitter}: a form submission waiting for a running autosave
  // Turns of autosaves that got no answer since the last one that did (JSON): the server may
  // have saved one and gone down before replying. The first is the one most likely to have
  // landed; a few of the latest are kept too, so the list stays small however long it is down.
  let unanswered = [];
  let chatmlTimer = null;

  // --- reading and writing the turns ------------------------------------------------------
  function turnNodes() {
    return Array.from(turnsBox.querySelectorAll("fieldset.turn"));
  }

  function readTurns() {
    return turnNodes().map((node) => {
      const turn = {
        role: node.querySelector("[name=role]").value,
        content: node.querySelector("[name=content]").value,
      };
      const draft = node.querySelector("[name=draft]").value;
      if (draft) {
        try { turn.draft = JSON.parse(draft); } catch (e) { /* provenance only */ }
      }
      return turn;
    });
  }

  function newTurnNode(turn) {
    const node = template.content.firstElementChild.cloneNode(true);
    node.querySelector("[name=role]").value = turn.role;
    node.querySelector("[name=content]").value = turn.content || "";
    node.querySelector("[name=draft]").value = turn.draft ? JSON.stringify(turn.draft) : "";
    const badge = node.querySelector(".badge");
    if (badge && !turn.draft) badge.remove();
    if (turn.draft && !badge) {
      const mark = document.createElement("span");
      mark.className = "badge";
      mark.textContent = "model draft";
      node.querySelector(".counts").after(mark);
    }
    return node;
  }

  function writeTurns(turns) {
    turnsBox.replaceChildren(...turns.map(newTurnNode));
    renumber();
  }

  function renumber() {
    turnNodes().forEach((node, index) => {
      node.className = `turn turn-${node.querySelector("[name=role]").value}`;
      node.querySelectorAll("button[name=action]").forEach((button) => {
        button.value = button.value.replace(/:\d+$/, `:${index}`);
      });
      const text = node.querySelector("[name=content]").value;
      node.querySelector("[data-counts]").textContent = `${text.length} characters`;
    });
    document.getElementById("no-turns").hidden = turnNodes().length > 0;
  }

  // --- change tracking, the browser copy and autosave ----------------------------------------
  function snapshot() {
    return { version: Number(versionInput.value), turns: readTurns(), at: Date.now() };
  }

  function changed() {
    dirty = true;
    renumber();
    try {
      localStorage.setItem(storageKey, JSON.stringify({ ...snapshot(), dirty: true }));
    } catch (e) { /* storage full or disabled: autosave still runs */ }
    setState("Unsaved changes");
    clearTimeout(chatmlTimer);
    chatmlTimer = setTimeout(refreshChatml, 400);
  }

  function setState(text) {
    saveState.textContent = text;
  }

  async function autosave() {
    if (!dirty || saving) return;
    saving = true;
    let saveAgain = false;
    const sent = snapshot();
    try {
      const response = await fetch(form.dataset.autosaveUrl, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrf },
        // The unanswered saves go along so that the server can tell its own copy of one of them
        // (stored in its own form: tool-call JSON is reformatted) from someone else's edit.
        body: JSON.stringify({ version: sent.version, turns: sent.turns, unanswered: unanswered.map((t) => JSON.parse(t)) }),
        credentials: "same-origin",
        redirect: "manual",
      });
      if (response.ok) {
        const body = await response.json();
        unanswered = [];
        setVersion(body.version);
        if (JSON.stringify(readTurns()) === JSON.stringify(sent.turns)) {
          dirty = false;
          localStorage.setItem(storageKey, JSON.stringify({ ...snapshot(), dirty: false }));
          setState(`Saved at ${new Date().toLocaleTimeString()}`);
        }
      } else if (response.status === 409) {
        const body = await response.json();
        if (body.own_save || unanswered.includes(JSON.stringify(body.turns))) {
          // The newer version holds exactly what an unanswered autosave of ours sent: it is our
          // own save, not someone else's edit, so the next save builds on it at once.
          unanswered = [];
          setVersion(body.version);
          saveAgain = true;
        } else {
          showConflict(body);
        }
      } else if (response.type === "opaqueredirect" || response.status === 403 || response.status === 401) {
        setState("Your session expired. Log in again in another tab: your text is kept in this browser and will be restored here.");
      } else {
        const body = await response.json().catch(() => ({}));
        setState(`Not saved: ${body.error || response.statusText}. Your text is kept in this browser.`);
      }
    } catch (e) {
      const turns = JSON.stringify(sent.turns);
      if (!unanswered.includes(turns)) {
        unanswered = unanswered.length < 6 ? [...unanswered, turns] : [unanswered[0], ...unanswered.slice(-4), turns];
      }
      setState("Offline? Not saved yet; your text is kept in this browser.");
    } finally {
      saving = false;
      if (submitAfterSave) {
        const { submitter } = submitAfterSave;
        submitAfterSave = null;
        form.requestSubmit(submitter); // now with the version the autosave got back
      } else if (saveAgain) {
        autosave();
      }
    }
  }

  function setVersion(version) {
    versionInput.value = version;
    document.getElementById("version-label").textContent = version;
  }

  function saveOnLeave() {
    if (!dirty) return;
    const body = new FormData();
    body.append("csrfmiddlewaretoken", csrf);
    body.append("payload", JSON.stringify({ version: Number(versionInput.value), turns: readTurns() }));
    navigator.sendBeacon(form.dataset.autosaveUrl, body);
  }

  // --- restore after a crash / expired session, and conflicts ---------------------------------
  function offerRestore() {
    let stored = null;
    try { stored = JSON.parse(localStorage.getItem(storageKey) || "null"); } catch (e) { return; }
    if (!stored || !stored.dirty || !Array.isArray(stored.turns)) return;
    if (JSON.stringify(stored.turns) === JSON.stringify(readTurns())) return;
    const banner = document.getElementById("restore-banner");
    document.getElementById("restore-text").textContent =
      `This browser holds text you typed at ${new Date(stored.at).toLocaleString()} that was never saved.`;
    banner.hidden = false;
    document.getElementById("restore-yes").addEventListener("click", () => {
      writeTurns(stored.turns);
      // The copy was typed against stored.version: a newer server version means a conflict,
      // which autosave reports instead of overwriting.
      versionInput.value = stored.version;
      banner.hidden = true;
      changed();
      autosave();
    });
    document.getElementById("restore-no").addEventListener("click", () => {
      localStorage.removeItem(storageKey);
      banner.hidden = true;
    });
  }

  function showConflict(body) {
    const banner = document.getElementById("conflict-banner");
    document.getElementById("conflict-text").textContent = body.error;
    banner.hidden = false;
    setState("Not saved: the conversation changed elsewhere.");
    document.getElementById("conflict-mine").onclick = () => {
      versionInput.value = body.version;
      banner.hidden = true;
      dirty = true;
      autosave();
    };
    document.getElementById("conflict-theirs").onclick = () => {
      writeTurns(body.turns);
      versionInput.value = body.version;
      document.getElementById("version-label").textContent = body.version;
      banner.hidden = true;
      dirty = false;
      localStorage.removeItem(storageKey);
      refreshChatml();
    };
  }

  // --- server-rendered helpers: ChatML view, Markdown preview, drafts -------------------------
  function turnsForm() {
    const body = new FormData();
    body.append("csrfmiddlewaretoken", csrf);
    readTurns().forEach((turn) => {
      body.append("role", turn.role);
      body.append("content", turn.content);
      body.append("draft", turn.draft ? JSON.stringify(turn.draft) : "");
    });
    return body;
  }

  async function refreshChatml() {
    try {
      const response = await fetch(form.dataset.chatmlUrl, { method: "POST", body: turnsForm() });
      if (response.ok) chatml.innerHTML = await response.text(); // escaped by Django templates
    } catch (e) { /* offline: the view catches up on the next change */ }
  }

  async function togglePreview(node) {
    const box = node.querySelector(".preview");
    if (!box.hidden) { box.hidden = true; return; }
    const body = new FormData();
    body.append("csrfmiddlewaretoken", csrf);
    body.append("text", node.querySelector("[name=content]").value);
    try {
      const response = await fetch(form.dataset.previewUrl, { method: "POST", body });
      box.innerHTML = response.ok ? await response.text() : ""; // sanitised by nh3 on the server
    } catch (e) {
      box.textContent = "The preview needs the server; it cannot be reached now.";
    }
    box.hidden = false;
  }

  async function draftReply() {
    const button = document.getElementById("draft-button");
    if (!button) return;
    button.disabled = true;
    setState("The model is drafting a reply…");
    try {
      const response = await fetch(form.dataset.draftUrl, { method: "POST", body: turnsForm() });
      const body = await response.json();
      if (!response.ok) { setState(body.error); return; }
      const node = newTurnNode({ role: "assistant", content: body.text, draft: body.draft });
      turnsBox.appendChild(node);
      changed();
      node.querySelector("textarea").focus();
      setState("Draft added: edit it until it is right.");
    } finally {
      button.disabled = false;
    }
  }

  // --- layout actions and shortcuts ----------------------------------------------------------
  function currentTurn() {
    return document.activeElement && document.activeElement.closest("fieldset.turn");
  }

  function move(node, direction) {
    if (!node) return;
    const sibling = direction === "up" ? node.previousElementSibling : node.nextElementSibling;
    if (!sibling) return;
    if (direction === "up") turnsBox.insertBefore(node, sibling);
    else turnsBox.insertBefore(sibling, node);
    changed();
  }

  function addTurn(role) {
    const node = newTurnNode({ role, content: "" });
    turnsBox.appendChild(node);
    changed();
    node.querySelector("textarea").focus();
  }

  form.addEventListener("click", (event) => {
    const button = event.target.closest("button");
    if (!button) return;
    const node = button.closest("fieldset.turn");
    if (button.dataset.add) { event.preventDefault(); addTurn(button.dataset.add); }
    else if (button.dataset.move) { event.preventDefault(); move(node, button.dataset.move); }
    else if (button.hasAttribute("data-delete")) {
      event.preventDefault();
      if (node.querySelector("textarea").value.trim() && !confirm("Delete this turn and its text?")) return;
      node.remove();
      changed();
    } else if (button.hasAttribute("data-preview")) { event.preventDefault(); togglePreview(node); }
    else if (button.id === "draft-button") { event.preventDefault(); draftReply(); }
  });

  form.addEventListener("input", changed);
  form.addEventListener("change", changed);
  form.addEventListener("submit", (event) => {
    if (saving) {
      // An autosave has sent this text and will come back with a new version number: posting
      // the form now would name the version it replaces and be refused as a conflict.
      event.preventDefault();
      submitAfterSave = { submitter: event.submitter };
      return;
    }
    // The text travels in this post: if the server refuses it, it comes back in the page it
    // renders; if it accepts it, it is saved. Either way the browser copy has done its job, and
    // keeping it would later offer to "restore" text over a newer version (a reviewer's edit).
    dirty = false;
    try { localStorage.removeItem(storageKey); } catch (e) { /* storage disabled */ }
  });

  document.addEventListener("keydown", (event) => {
    const key = event.key;
    if ((event.ctrlKey || event.metaKey) && key === "s") { event.preventDefault(); dirty = true; autosave(); }
    else if ((event.ctrlKey || event.metaKey) && key === "Enter") { event.preventDefault(); document.getElementById("submit-button").click(); }
    else if (event.altKey && event.shiftKey && ["U", "A", "T", "R"].includes(key.toUpperCase())) {
      event.preventDefault();
      addTurn({ U: "user", A: "assistant", T: "tool_call", R: "tool" }[key.toUpperCase()]);
    } else if (event.altKey && (key === "ArrowUp" || key === "ArrowDown")) {
      event.preventDefault();
      const node = currentTurn();
      move(node, key === "ArrowUp" ? "up" : "down");
      if (node) node.querySelector("textarea").focus();
    } else if (event.altKey && key.toLowerCase() === "p") { event.preventDefault(); if (currentTurn()) togglePreview(currentTurn()); }
    else if (event.altKey && key.toLowerCase() === "d") { event.preventDefault(); draftReply(); }
  });

  document.addEventListener("visibilitychange", () => { if (document.visibilityState === "hidden") saveOnLeave(); });
  window.addEventListener("pagehide", saveOnLeave);
  setInterval(autosave, AUTOSAVE_MS);
  renumber();
  offerRestore();
})();
