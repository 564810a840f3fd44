// Ranking by dragging or with the keyboard, on top of a form of rank selects that works alone.
// The order of the cards is the ranking; "=" ties a card with the one above it. The arena's
// vote buttons answer to the keys 1-4.
(function () {
  "use strict";
  const arena = document.getElementById("arena-form");
  if (arena) {
    document.addEventListener("keydown", (event) => {
      if (event.target.closest("textarea, input, select")) return;
      const button = arena.querySelector(`button[data-key="${event.key}"]`);
      if (button) { event.preventDefault(); button.click(); }
    });
    return;
  }
  const form = document.getElementById("rank-form");
  if (!form) return;
  const list = document.getElementById("replies");
  const tiedWithAbove = new WeakSet();
  let dragged = null;

  function cards() { return Array.from(list.querySelectorAll("li.reply")); }

  // Ranks follow the cards' order; a card tied with the one above shares its rank.
  function renumber() {
    let rank = 0;
    cards().forEach((card, position) => {
      if (position === 0 || !tiedWithAbove.has(card)) rank = position + 1;
      card.querySelector("select").value = String(rank);
      card.classList.toggle("tied", position > 0 && tiedWithAbove.has(card));
    });
  }

  // Reading the selects back into card order, so a choice made in a select is respected.
  function orderFromSelects() {
    const sorted = cards().sort((a, b) =>
      Number(a.querySelector("select").value) - Number(b.querySelector("select").value));
    let previous = null;
    sorted.forEach((card) => {
      const rank = card.querySelector("select").value;
      if (previous !== null && previous === rank) tiedWithAbove.add(card); else tiedWithAbove.delete(card);
      previous = rank;
      list.appendChild(card);
    });
  }

  list.addEventListener("change", (event) => {
    if (event.target.matches("select")) { orderFromSelects(); }
  });
  // A card that leaves its place takes no tie with it, and the card that was tied to it is
  // untied too: a tie is always with the neighbour the person chose, never a new one.
  function detach(card) {
    const next = card.nextElementSibling;
    if (next) tiedWithAbove.delete(next);
    tiedWithAbove.delete(card);
  }

  list.addEventListener("dragstart", (event) => {
    dragged = event.target.closest("li.reply");
    if (dragged) detach(dragged);
    event.dataTransfer.effectAllowed = "move";
  });
  list.addEventListener("dragover", (event) => {
    event.preventDefault();
    const over = event.target.closest("li.reply");
    if (!dragged || !over || over === dragged) return;
    const after = event.clientY > over.getBoundingClientRect().top + over.offsetHeight / 2;
    list.insertBefore(dragged, after ? over.nextSibling : over);
  });
  list.addEventListener("drop", (event) => { event.preventDefault(); tiedWithAbove.delete(dragged); dragged = null; renumber(); });
  // A drag released outside the list (or cancelled with Escape) has no drop, but dragover may
  // already have moved the card: the ranks must follow the order shown.
  list.addEventListener("dragend", () => {
    if (!dragged) return;
    tiedWithAbove.delete(dragged);
    dragged = null;
    renumber();
  });

  document.addEventListener("keydown", (event) => {
    const card = document.activeElement && document.activeElement.closest("li.reply");
    if ((event.ctrlKey || event.metaKey) && event.key === "Enter") {
      event.preventDefault();
      document.getElementById("submit-ranking").click();
      return;
    }
    if (!card || event.target.closest("textarea, select")) return;
    if (event.altKey && (event.key === "ArrowUp" || event.key === "ArrowDown")) {
      event.preventDefault();
      const sibling = event.key === "ArrowUp" ? card.previousElementSibling : card.nextElementSibling;
      if (sibling) {
        detach(card);
        list.insertBefore(card, event.key === "ArrowUp" ? sibling : sibling.nextSibling);
        renumber();
        card.focus();
      }
    } else if (event.key === "=") {
      event.preventDefault();
      if (tiedWithAbove.has(card)) tiedWithAbove.delete(card); else tiedWithAbove.add(card);
      renumber();
    }
  });
  renumber();
})();
