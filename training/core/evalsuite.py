"""The evaluations a checkpoint gets, one function per figure (pure; torch and transformers).

Each function takes loaded models or folders and plain data and returns a dict of numbers, so
the ``evaluate`` stage (:mod:`training.core.evaluate`) can run whichever its inputs allow:

- :func:`text_figures`: validation loss (nats per token) and bits per byte on held-out text,
  chosen by the same rule pretraining uses (every Nth document), so a pretrained checkpoint is
  measured on documents it never trained on.
- :func:`conversation_figures`: held-out SFT loss on the assistant's tokens only (the tokens a
  fine-tune learns from) and the share of greedy replies that end their turn with ``<|im_end|>``.
- :func:`choice_figures`: multiple-choice accuracy by log-likelihood, as ARC/MMLU harnesses
  score: the option letter the model finds likeliest as the start of its reply. It measures what
  a small model knows even when its free-form answers are not yet well formed.
- :func:`factuality_figures`: the shares of greedy answers that are correct, wrong, or say "I
  don't know" (a wrong answer given confidently is what factuality work reduces).
- :func:`reward_accuracy`: a reward model's pairwise accuracy on held-out preference pairs.
- :func:`win_rate`: a checkpoint's greedy replies against a baseline's (its parent), judged by a
  reward model; ties count half.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Role = Literal["generative", "reward"]
TEXT_WINDOW = 512  # tokens per scored window of held-out text (or the model's window if smaller)
EVAL_BATCH = 8


def model_role(folder: Path) -> Role:
    """Whether a checkpoint folder holds a reward model (a one-output sequence classifier) or a
    model that generates text (a causal LM, or a LoRA adapter on one)."""
    from training.core.trl_common import read_json

    folder = Path(folder)
    adapter = read_json(folder / "adapter_config.json")
    if adapter is not None:
        return "reward" if adapter.get("task_type") == "SEQ_CLS" else "generative"
    config = read_json(folder / "config.json") or {}
    architectures = config.get("architectures") or []
    if any(str(a).endswith("ForSequenceClassification") for a in architectures):
        return "reward"
    return "generative"


# ---------------------------------------------------------------------------- held-out text


def held_out_documents(paths: Iterable[Path], every: int) -> Iterator[str]:
    """Documents number 1, 2, ... across ``paths`` in order; every ``every``-th is held out, the
    rule pretraining applies with ``every = round(1 / val_fraction)``."""
    from training.core.corpus import iter_documents

    number = 0
    for path in paths:
        for text in iter_documents(Path(path)):
            number += 1
            if number % every == 0:
                yield text


def text_figures(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    documents: Iterable[str],
    *,
    max_tokens: int,
) -> dict[str, Any]:
    """``{"val_loss", "val_bpb", "eval_tokens"}`` over up to ``max_tokens`` tokens of
    ``documents``, joined by the end-of-text token as in pretraining and cut into windows."""
    import numpy as np
    import torch

    from training.core.corpus import END_OF_TEXT
    from training.core.pretrain import token_byte_lengths

    eot = tok.convert_tokens_to_ids(END_OF_TEXT)
    stream: list[int] = []
    for text in documents:
        stream.extend(tok.encode(text, add_special_tokens=False))
        if isinstance(eot, int) and eot >= 0:
            stream.append(eot)
        if len(stream) > max_tokens:
            break
    stream = stream[: max_tokens + 1]
    if len(stream) < 2:
        return {"val_loss": None, "val_bpb": None, "eval_tokens": 0}
    window = min(TEXT_WINDOW, _context_window(model)) + 1
    byte_lengths = torch.from_numpy(token_byte_lengths(tok).astype(np.int64))
    windows = [stream[i : i + window] for i in range(0, len(stream) - 1, window - 1)]
    windows = [w for w in windows if len(w) >= 2]
    nats = text_nats = 0.0
    tokens = text_bytes = 0
    with _eval_mode(model):
        for ids in windows:
            losses = _token_losses(model, ids)
            nbytes = byte_lengths[torch.tensor(ids[1:])]
            nats += float(losses.sum())
            text_nats += float((losses * (nbytes > 0)).sum())  # special tokens stand for no text
            text_bytes += int(nbytes.sum())
            tokens += len(ids) - 1
    return {
        "val_loss": nats / tokens,
        "val_bpb": text_nats / (math.log(2) * max(1, text_bytes)),
        "eval_tokens": tokens,
    }


def _token_losses(model: PreTrainedModel, ids: list[int]) -> Any:
    """Cross-entropy of each next token of one sequence (nats), as a 1-D float tensor."""
    import torch

    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    logits = model(input_ids=input_ids[:, :-1], use_cache=False).logits.float()
    return torch.nn.functional.cross_entropy(logits[0], input_ids[0, 1:], reduction="none").cpu()


def _context_window(model: PreTrainedModel) -> int:
    config = model.config.get_text_config()
    return int(getattr(config, "max_position_embeddings", TEXT_WINDOW) or TEXT_WINDOW)


@contextmanager
def _eval_mode(model: PreTrainedModel) -> Iterator[None]:
    """Eval mode and no gradients for the block; the model's train/eval mode is restored."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------- conversations


def conversation_figures(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    conversations: list[list[dict[str, Any]]],
    *,
    max_new_tokens: int,
    stop_prompts: int = 16,
) -> dict[str, Any]:
    """``{"sft_loss", "stop_rate", "conversations", "replies"}``: the mean loss per assistant
    token over the conversations that fit the context window, and the share of greedy replies to
    up to ``stop_prompts`` of them (cut before their last assistant turn) that end the turn."""
    import torch

    from training.core.sft import Conversation, generate_replies, held_out_prompts

    window = _context_window(model)
    nats, counted, scored = 0.0, 0, 0
    with _eval_mode(model):
        for messages in conversations:
            encoded = tok.apply_chat_template(
                messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
            )
            ids, mask = list(encoded["input_ids"]), list(encoded["assistant_masks"])
            if len(ids) > window or sum(mask) == 0:
                continue
            losses = _token_losses(model, ids)
            weights = torch.tensor(mask[1:], dtype=losses.dtype)
            nats += float((losses * weights).sum())
            counted += int(weights.sum())
            scored += 1
    prompts = held_out_prompts(
        [Conversation(messages=m, where="") for m in conversations], stop_prompts
    )
    replies = [r for r in generate_replies(model, tok, prompts, max_new_tokens) if r is not None]
    return {
        "sft_loss": nats / counted if counted else None,
        "stop_rate": sum(r["ended"] for r in replies) / len(replies) if replies else None,
        "conversations": scored,
        "replies": len(replies),
    }


# -------------------------------------------------------------------------- multiple choice


def choice_figures(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    problems: list[dict[str, Any]],
    *,
    system_prompt: str | None = None,
) -> dict[str, Any]:
    """``{"mc_accuracy", "mc_scored"}`` over the ``"choice"`` problems: for each, the option
    letter whose token is likeliest right after the chat prompt (the reply's first token)."""
    import torch

    from training.core.checkers import LETTERS
    from training.core.generate import chat_prompt
    from training.core.grpo import prompt_messages

    choice = [p for p in problems if p.get("checker") == "choice" and p.get("choices")]
    window = _context_window(model)
    device = next(model.parameters()).device
    correct = scored = 0
    with _eval_mode(model):
        for problem in choice:
            letters = LETTERS[: len(problem["choices"])]
            letter_ids = [_first_token(tok, letter) for letter in letters]
            prompt = chat_prompt(tok, prompt_messages(problem, system_prompt))
            ids = tok.encode(prompt, add_special_tokens=False)
            if len(ids) >= window or None in letter_ids:
                continue
            logits = model(input_ids=torch.tensor([ids], device=device), use_cache=False).logits
            scores = logits[0, -1, letter_ids].float()
            picked = letters[int(torch.argmax(scores))]
            correct += picked == str(problem["answer"]).upper()
            scored += 1
    return {"mc_accuracy": correct / scored if scored else None, "mc_scored": scored}


def _first_token(tok: PreTrainedTokenizerBase, text: str) -> int | None:
    ids = tok.encode(text, add_special_tokens=False)
    return ids[0] if ids else None


# ------------------------------------------------------------------------------ factuality


def factuality_figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Shares of greedy answers correct, wrong and refused ("I don't know"), from the rows of
    :func:`training.core.grpo.evaluate_problems`: a refusal is never counted as wrong."""
    from training.core.factuality import is_refusal

    if not rows:
        return {"correct_rate": None, "wrong_rate": None, "refusal_rate": None}
    verdicts = [
        "refused" if is_refusal(r["greedy"]) else "correct" if r["greedy_correct"] else "wrong"
        for r in rows
    ]
    total = len(verdicts)
    return {
        "correct_rate": verdicts.count("correct") / total,
        "wrong_rate": verdicts.count("wrong") / total,
        "refusal_rate": verdicts.count("refused") / total,
    }


# ---------------------------------------------------------------------------- reward models


def reward_accuracy(reward_dir: Path, preference_dirs: list[Path]) -> dict[str, Any]:
    """``{"rm_accuracy", "rm_pairs"}`` on the preference snapshots' held-out pairs."""
    from training.core.reward import load_reward_model, read_pairs, score_pairs

    pairs = [
        pair
        for folder in preference_dirs
        if (Path(folder) / "validation.jsonl").is_file()
        for pair in read_pairs(Path(folder) / "validation.jsonl")
    ]
    if not pairs:
        return {"rm_accuracy": None, "rm_pairs": 0}
    model, tok = load_reward_model(Path(reward_dir))
    scores = score_pairs(
        model, tok, pairs, batch_size=EVAL_BATCH, use_margins=False, center_coefficient=None
    )
    return {"rm_accuracy": scores.accuracy, "rm_pairs": len(pairs)}


def win_rate(
    replies: list[dict[str, Any] | None],
    baseline: list[dict[str, Any] | None],
    prompts: list[list[dict[str, Any]]],
    judge: Callable[[list[list[dict[str, Any]]]], list[float]],
) -> dict[str, Any]:
    """``{"win_rate", "win_pairs"}``: the share of prompts where the judge scores the reply above
    the baseline's reply to the same prompt (ties half); prompts either side could not answer
    (too long for its window) are left out."""
    rows = [
        (prompt, mine["reply"], theirs["reply"])
        for prompt, mine, theirs in zip(prompts, replies, baseline, strict=True)
        if mine is not None and theirs is not None
    ]
    if not rows:
        return {"win_rate": None, "win_pairs": 0}
    conversations = [
        [*prompt, {"role": "assistant", "content": reply}]
        for prompt, a, b in rows
        for reply in (a, b)
    ]
    scores = judge(conversations)
    points = sum(
        1.0 if a > b else 0.5 if a == b else 0.0
        for a, b in zip(scores[0::2], scores[1::2], strict=True)
    )
    return {"win_rate": points / len(rows), "win_pairs": len(rows)}


def reward_judge(reward_dir: Path) -> Callable[[list[list[dict[str, Any]]]], list[float]]:
    """Scores conversations with a reward model folder (long ones keep their newest tokens)."""
    from training.core.reward import load_reward_model, score

    model, tok = load_reward_model(Path(reward_dir))
    return lambda conversations: score(model, tok, conversations, truncate_left=True)
