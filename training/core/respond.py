"""The ``responses`` stage: sample K replies per prompt from one or more checkpoints.

People rank these replies (or vote between two of them in the arena), and the rankings train a
reward model. Generating is the slow part, so it runs in the background like every stage.

Inputs: ``inputs["checkpoints"]``, one or more model folders (a LoRA adapter runs on the base
recorded in its ``adapter_config.json``); ``inputs["prompts"]``, one JSONL file
whose lines are ``{"id": ..., "prompt": [messages]}`` (the conversation so far, ending with a
user turn). Output ``responses.jsonl``: one line per prompt, ``{"id", "prompt", "responses":
[{"text", "checkpoint", "sample", "finish_reason", "tokens"}]}`` with
``samples_per_checkpoint`` replies from each checkpoint in checkpoint order, and
``orchard.json``. Sampling is seeded: the same inputs and config give the same replies.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from training.core.reporting import Cancelled, Reporter

PROMPTS_PER_BATCH = 8


class ResponsesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    samples_per_checkpoint: int = Field(
        2, ge=1, le=16, description="Replies sampled from each checkpoint for every prompt."
    )
    max_new_tokens: int = Field(128, ge=1, le=4096, description="Longest reply, in tokens.")
    temperature: float = Field(
        0.8, ge=0.0, le=2.0, description="Sampling temperature; above 0 so replies differ."
    )
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling; 1 = off.")
    seed: int = Field(0, ge=0, description="Random seed for reproducible replies.")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")


def read_prompts(path: Path) -> list[dict[str, Any]]:
    prompts = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path.name}, line {number}: not valid JSON ({exc})") from None
            messages = row.get("prompt") if isinstance(row, dict) else None
            if not isinstance(messages, list) or not messages:
                raise ValueError(f'{path.name}, line {number}: expected {{"prompt": [messages]}}')
            if messages[-1].get("role") != "user":
                raise ValueError(
                    f"{path.name}, line {number}: the prompt must end with a user turn"
                )
            prompts.append({"id": row.get("id", number), "prompt": messages})
    if not prompts:
        raise ValueError(f"{path.name} holds no prompts")
    return prompts


def run(
    cfg: ResponsesConfig,
    inputs: dict[str, list[Path]],
    out_dir: Path,
    reporter: Reporter,
    *,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    from training.core.generate import Engine, SamplingParams, chat_prompt

    checkpoints = inputs.get("checkpoints") or []
    prompt_files = inputs.get("prompts") or []
    if not checkpoints or len(prompt_files) != 1:
        raise ValueError("responses need at least one checkpoint and exactly one prompts file")
    prompts = read_prompts(Path(prompt_files[0]))
    replies: list[list[dict[str, Any]]] = [[] for _ in prompts]
    total = len(checkpoints) * len(prompts)
    done = 0
    for index, folder in enumerate(checkpoints):
        engine = Engine.load(folder, device=cfg.device)
        params = SamplingParams(
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            seed=cfg.seed + index,
            n=cfg.samples_per_checkpoint,
        )
        for start in range(0, len(prompts), PROMPTS_PER_BATCH):
            if reporter.should_stop():
                raise Cancelled()
            batch = prompts[start : start + PROMPTS_PER_BATCH]
            texts = [chat_prompt(engine.tokenizer, p["prompt"]) for p in batch]
            for completion in engine.generate(texts, params):
                replies[start + completion.prompt_index].append(
                    {
                        "text": completion.text.strip(),
                        "checkpoint": index,
                        "sample": completion.sample_index,
                        "finish_reason": completion.finish_reason,
                        "tokens": len(completion.token_ids),
                    }
                )
            done += len(batch)
            reporter.progress(done, total, f"checkpoint {index + 1} of {len(checkpoints)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "responses.jsonl", "w", encoding="utf-8") as handle:
        for prompt, answers in zip(prompts, replies, strict=True):
            row = {"id": prompt["id"], "prompt": prompt["prompt"], "responses": answers}
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    ended = sum(r["finish_reason"] == "eos" for rows in replies for r in rows)
    produced = sum(len(rows) for rows in replies)
    result = {
        "prompts": len(prompts),
        "responses": produced,
        "ended_share": ended / produced if produced else 0.0,
    }
    manifest = {"kind": "responses", "config": cfg.model_dump(), "stats": result}
    (out_dir / "orchard.json").write_text(json.dumps(manifest, indent=1))
    return result
