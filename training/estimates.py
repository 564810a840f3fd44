"""What a run will cost, shown on its launch page before anything is queued."""

from __future__ import annotations

from typing import Any

from training.models import Artifact, ArtifactKind

DEFAULT_VOCAB = 8192


def _tokenizer_facts(tokenizer_ids: list[int]) -> tuple[int | None, float | None]:
    """(vocabulary size, characters per token) of the chosen tokenizer, when known."""
    tokenizer = Artifact.objects.filter(pk__in=tokenizer_ids, kind=ArtifactKind.TOKENIZER).first()
    if tokenizer is None:
        return None, None
    result = tokenizer.run.result if tokenizer.run else {}
    vocab = result.get("vocab_size")
    if vocab is None:
        from training.core.token_view import load_tokenizer

        vocab = load_tokenizer(tokenizer.abspath()).get_vocab_size()
    return int(vocab), result.get("chars_per_token")


def _corpus_characters(corpus_ids: list[int]) -> int:
    corpora = Artifact.objects.filter(pk__in=corpus_ids, kind=ArtifactKind.CORPUS)
    return sum(int(c.meta.get("characters") or 0) for c in corpora)


def pretrain_estimate(config: dict[str, Any], inputs: dict[str, list[int]]) -> list[tuple]:
    from training.core.model import estimate, format_count, get_preset

    preset = get_preset(config.get("preset") or "tiny")
    vocab, chars_per_token = _tokenizer_facts(inputs.get("tokenizer", []))
    context = int(config.get("context_length") or 256)
    batch = int(config.get("batch_size") or 16) * int(config.get("grad_accum_steps") or 1)
    shape = preset.config_shape(vocab or DEFAULT_VOCAB, context)
    processes = max(0, int(config.get("processes", 1)))
    micro_batch = int(config.get("batch_size") or 16)
    # Data parallelism: every process holds the whole model, its optimizer state and gradients,
    # but only its share of each micro-batch's activations.
    per_process_batch = -(-micro_batch // processes) if processes > 1 else micro_batch
    figures = estimate(shape, batch_size=per_process_batch, context_length=context)
    params = figures["parameters"]
    trained = int(config.get("max_steps") or 0) * batch * context
    rows: list[tuple] = [
        (
            "Parameters",
            format_count(params)
            + ("" if vocab else f" (assuming a {DEFAULT_VOCAB} vocabulary: choose a tokenizer)"),
        ),
        ("FLOPs per token", format_count(figures["flops_per_token"])),
        ("Training compute", format_count(figures["flops_per_token"] * trained) + "FLOPs"),
        (
            _memory_label(processes),
            " / ".join(
                f"{figures['memory_bytes'][d]['total'] / 2**30:.2f} GiB" for d in ("fp32", "bf16")
            ),
        ),
        (
            "Tokens trained",
            f"{format_count(trained)} "
            f"({trained / params:.1f} per parameter; Chinchilla-optimal is about 20)",
        ),
    ]
    characters = _corpus_characters(inputs.get("corpus", []))
    if characters and chars_per_token:
        corpus_tokens = characters / chars_per_token
        rows.append(
            (
                "Corpus",
                f"about {format_count(corpus_tokens)} tokens, so "
                f"{trained / corpus_tokens:.1f} passes over it",
            )
        )
    return rows


def _memory_label(processes: int) -> str:
    """What the memory figure is for: the one training process, or each of several."""
    if processes == 1:
        return "Memory (fp32 / bf16)"
    if processes == 0:
        # The worker counts its GPUs when the run starts; the web server cannot see them.
        return "Memory per GPU, one process per visible GPU (fp32 / bf16; less with more GPUs)"
    return f"Memory per GPU, {processes} processes (fp32 / bf16)"
