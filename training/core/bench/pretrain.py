"""Training throughput of Orchard's pretraining step against a plain transformers loop.

    python -m training.core.bench pretrain            # about a minute on a 2-core CPU
    python -m training.core.bench pretrain --quick    # seconds: no compile, one short round

Both sides train the same ``LlamaForCausalLM`` shape (by default 4 layers, 4 heads, width 256,
context 256, batch 16, vocabulary 4096), from the same initial weights, on the same batches:

- reference: ``model(input_ids=x, labels=x).loss``, ``backward``, ``torch.optim.AdamW`` with its
  defaults, fp32, eager, transformers' default attention (SDPA);
- Orchard: :func:`training.core.pretrain.make_train_step`, the step the ``pretrain`` stage runs:
  fused AdamW, gradient clipping, the loss computed from the backbone and head directly, the
  precision :func:`training.core.device.autocast_dtype` picks (bf16 autocast on a CPU with native
  bf16 matmuls, fp32 on others), ``torch.compile`` unless ``--no-compile`` or ``--quick``, and
  the attention implementation :func:`~training.core.pretrain.choose_attention` picks.

Run as ``python -m training.core.bench``, the process keeps freed memory for reuse as Orchard's
workers do (:mod:`training.core.allocator`), for both sides: the plain loop gains more from it.
The two alternate in rounds, so load from other processes hits both alike. Tokens per second
are the best round of each side (other processes can only slow a round down), ``speedup`` their
ratio; ``speedup_median_of_rounds`` is the median of the ratios of adjacent rounds, the figure
to trust on a busy machine. When Orchard computes in bf16, ``orchard_in_fp32`` times the same
step in fp32 in the same rounds: how much of the speedup the step brings and how much the
precision does. MFU is model FLOPs per second
(:func:`training.core.model.flops_per_token` times tokens per second) over the best
large-matmul throughput measured in the same run, in the dtype each side computes in.

``matmul_ceiling``: every matrix product of one training step as the model's layers define
them (separate q, k, v, o, gate, up and down projections, attention per head, the output head;
forward and backward), each timed alone, best of several repetitions, summed. Nothing else
(norms, softmax, the optimizer, memory traffic between them) is counted. Its tokens per second
over the reference's is the largest speedup a step computing these same products can have on
this machine; ``orchard_share`` is how much of it Orchard's step reaches. Small matrices run
below the large-matmul peak, so at this size this ceiling, not the peak, is the limit; only
computing the products in other shapes (joining projections into larger ones) could pass it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

GOALS = {"speedup": 1.9, "mfu": 0.60}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.core.bench pretrain")
    parser.add_argument("--quick", action="store_true", help="one short round, no compile")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per side and round")
    parser.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.no_compile = 1, 2, True
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    from training.core.device import autocast_dtype, describe_device, dtype_name
    from training.core.model import flops_per_token

    args = parse_args(list(argv or []))
    started = time.perf_counter()
    device = torch.device("cpu")
    peaks = {name: matmul_peak_gflops(dt, quick=args.quick) for name, dt in _dtypes().items()}
    amp = autocast_dtype(device, args.dtype)  # as the pretrain stage resolves its dtype
    config = _config(args)
    windows = _batches(args, config.vocab_size)

    reference = _Reference(config, windows)
    orchard = _Orchard(config, windows, reference.model, amp, compile=not args.no_compile)
    # With bf16 the same step in fp32 too, so the speed the step itself brings shows apart from
    # the speed the precision brings.
    in_fp32 = None
    if amp is not None:
        in_fp32 = _Orchard(config, windows, reference.model, None, compile=not args.no_compile)
    initial = {"reference": reference.initial_loss(), "orchard": orchard.initial_loss()}
    reference.warm_up()
    orchard.warm_up()
    if in_fp32 is not None:
        in_fp32.warm_up()

    ref_rounds, orch_rounds, fp32_rounds = [], [], []
    for _ in range(args.rounds):
        ref_rounds.append(reference.tokens_per_sec(args.steps))
        orch_rounds.append(orchard.tokens_per_sec(args.steps))
        if in_fp32 is not None:
            fp32_rounds.append(in_fp32.tokens_per_sec(args.steps))
    if not args.quick:  # once more, in case the machine was busier at the start
        for name, dt in _dtypes().items():
            peaks[name] = max(peaks[name], matmul_peak_gflops(dt))
    ceiling_seconds = matmul_seconds_per_step(config, args.batch_size, args.context, amp)
    # Best round of each side: on a shared machine, other processes only ever slow a round down.
    ref_tps, orch_tps = max(ref_rounds), max(orch_rounds)
    ceiling_tps = args.batch_size * args.context / ceiling_seconds
    round_ratios = [o / r for o, r in zip(orch_rounds, ref_rounds, strict=True)]

    flops = flops_per_token(config, args.context)
    orch_peak = peaks[dtype_name(amp)]
    speedup = orch_tps / ref_tps
    mfu = flops * orch_tps / (orch_peak * 1e9)
    fp32_side = {}
    if fp32_rounds:
        fp32_tps = max(fp32_rounds)
        fp32_side["orchard_in_fp32"] = {
            "tokens_per_sec": round(fp32_tps, 1),
            "rounds": [round(v, 1) for v in fp32_rounds],
            "speedup": round(fp32_tps / ref_tps, 3),
            "mfu_vs_fp32_peak": round(flops * fp32_tps / (peaks["fp32"] * 1e9), 4),
        }
    return {
        "benchmark": "pretrain",
        "quick": args.quick,
        "device": describe_device(device),
        "shape": {
            "layers": args.layers,
            "heads": args.heads,
            "width": args.width,
            "intermediate": config.intermediate_size,
            "context": args.context,
            "batch_size": args.batch_size,
            "vocab": args.vocab,
            "tokens_per_step": args.batch_size * args.context,
        },
        "flops_per_token": flops,
        "matmul_peak_gflops": {k: round(v, 1) for k, v in peaks.items()},
        "reference": {
            "recipe": "LlamaForCausalLM(labels=x), torch.optim.AdamW defaults, fp32, eager, sdpa",
            "tokens_per_sec": round(ref_tps, 1),
            "rounds": [round(v, 1) for v in ref_rounds],
            "mfu_vs_fp32_peak": round(flops * ref_tps / (peaks["fp32"] * 1e9), 4),
        },
        "orchard": {
            "recipe": orchard.recipe,
            "dtype": dtype_name(amp),
            "compile": not args.no_compile,
            "attention": orchard.attention,
            "warmup_seconds": round(orchard.warmup_seconds, 2),
            "tokens_per_sec": round(orch_tps, 1),
            "rounds": [round(v, 1) for v in orch_rounds],
            f"mfu_vs_{dtype_name(amp)}_peak": round(mfu, 4),
        },
        **fp32_side,
        "matmul_ceiling": {
            "dtype": dtype_name(amp),
            "seconds_per_step": float(f"{ceiling_seconds:.6g}"),  # tiny shapes take milliseconds
            "tokens_per_sec": round(ceiling_tps, 1),
            "gflops": round(flops * ceiling_tps / 1e9, 1),
            "speedup_over_reference": round(ceiling_tps / ref_tps, 3),
            "orchard_share": round(orch_tps / ceiling_tps, 4),
        },
        "initial_loss": {k: round(v, 5) for k, v in initial.items()},
        "speedup": round(speedup, 3),
        "speedup_median_of_rounds": round(statistics.median(round_ratios), 3),
        "goals": {
            **GOALS,
            "speedup_met": speedup >= GOALS["speedup"],
            "mfu_met": mfu >= GOALS["mfu"],
        },
        "seconds": round(time.perf_counter() - started, 1),
    }


def _dtypes() -> dict[str, torch.dtype]:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_peak_gflops(dtype: torch.dtype, *, quick: bool = False) -> float:
    """Best GFLOP/s of square matmuls large enough to be compute-bound, in ``dtype``.

    Several sizes, best of several repetitions each: the peak this machine actually reaches
    with torch's kernels at this moment (a lower bound of the hardware's datasheet peak).
    """
    import torch

    sizes, reps = ((1024,), 3) if quick else ((1024, 2048, 3072), 5)
    generator = torch.Generator().manual_seed(0)
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, generator=generator).to(dtype)
        b = torch.randn(n, n, generator=generator).to(dtype)
        a @ b  # first call: allocation and kernel selection
        for _ in range(reps):
            began = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - began) / 1e9)
    return best


def step_matmuls(config: Any, batch: int, context: int) -> list[tuple[tuple[int, ...], ...]]:
    """The (left, right) operand shapes of every matrix product in one training step.

    A linear layer ``y = x @ w.T`` (x: tokens x in, w: out x in) costs ``x @ w.T`` forward and
    ``dy @ w`` and ``dy.T @ x`` backward; attention's ``q @ k.T`` and ``p @ v`` (per batch row
    and head) cost one product forward and two backward each. Together they are the FLOPs of
    :func:`training.core.model.flops_per_token`.
    """
    from training.core.model import ModelShape

    s = ModelShape.of(config)
    tokens = batch * context
    kv_width = s.kv_heads * s.head_dim
    linears = [  # (in, out) of each weight, per layer
        (s.hidden, s.attn_width),  # q
        (s.hidden, kv_width),  # k
        (s.hidden, kv_width),  # v
        (s.attn_width, s.hidden),  # o
        (s.hidden, s.intermediate),  # gate
        (s.hidden, s.intermediate),  # up
        (s.intermediate, s.hidden),  # down
    ]
    products: list[tuple[tuple[int, ...], ...]] = []
    for _layer in range(s.layers):
        for fan_in, fan_out in linears:
            products += _linear_products(tokens, fan_in, fan_out)
        heads, d = (batch, s.heads), s.head_dim
        products += [
            ((*heads, context, d), (*heads, d, context)),  # q @ k.T
            ((*heads, context, context), (*heads, context, d)),  # p @ v
            ((*heads, context, context), (*heads, context, d)),  # d(q @ k.T) wrt q: ds @ k
            ((*heads, context, context), (*heads, context, d)),  # ... wrt k: ds.T @ q
            ((*heads, context, d), (*heads, d, context)),  # d(p @ v) wrt p: dy @ v.T
            ((*heads, context, context), (*heads, context, d)),  # ... wrt v: p.T @ dy
        ]
    return products + _linear_products(tokens, s.hidden, s.vocab)  # the output head


def _linear_products(tokens: int, fan_in: int, fan_out: int) -> list[tuple[tuple[int, ...], ...]]:
    return [
        ((tokens, fan_in), (fan_in, fan_out)),  # x @ w.T
        ((tokens, fan_out), (fan_out, fan_in)),  # dx = dy @ w
        ((fan_out, tokens), (tokens, fan_in)),  # dw = dy.T @ x
    ]


def matmul_seconds_per_step(
    config: Any, batch: int, context: int, amp: torch.dtype | None, reps: int = 5
) -> float:
    """Seconds the products of :func:`step_matmuls` take, each alone, best of ``reps``."""
    import torch

    dtype = amp or torch.float32
    generator = torch.Generator().manual_seed(0)
    best: dict[tuple[tuple[int, ...], ...], float] = {}
    for shapes in step_matmuls(config, batch, context):
        if shapes in best:  # the layers repeat their shapes: time each shape once
            continue
        left, right = (torch.randn(shape, generator=generator).to(dtype) for shape in shapes)
        left @ right  # allocation and kernel selection
        times = []
        for _ in range(reps):
            began = time.perf_counter()
            left @ right
            times.append(time.perf_counter() - began)
        best[shapes] = min(times)
    return sum(best[shapes] for shapes in step_matmuls(config, batch, context))


def _config(args: argparse.Namespace) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.width,
        intermediate_size=3 * args.width,  # the mini preset's ratio
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=args.context,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=3,
        pad_token_id=1,
    )


def _batches(args: argparse.Namespace, vocab: int) -> list[torch.Tensor]:
    """Enough distinct (B, T+1) windows for every step of the run, same for both sides."""
    import torch

    generator = torch.Generator().manual_seed(0)
    count = 2 + args.rounds * args.steps + 2
    shape = (args.batch_size, args.context + 1)
    return [torch.randint(0, vocab, shape, generator=generator) for _ in range(count)]


class _Reference:
    """transformers' model trained the way its documentation shows, in plain fp32."""

    def __init__(self, config: Any, windows: list[torch.Tensor]) -> None:
        import torch
        from transformers import LlamaForCausalLM

        torch.manual_seed(0)
        self.model = LlamaForCausalLM(config)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=3e-4)
        self.windows = windows
        self.cursor = 0

    def initial_loss(self) -> float:
        """Loss on the first window before any update (targets: positions 1..T-1)."""
        import torch

        x = self.windows[0][:, :-1]
        with torch.no_grad():
            return self.model(input_ids=x, labels=x).loss.item()

    def step(self) -> None:
        x = self.windows[self.cursor % len(self.windows)][:, :-1]  # (B, T)
        self.cursor += 1
        loss = self.model(input_ids=x, labels=x).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()

    def warm_up(self) -> None:
        self.step()

    def tokens_per_sec(self, steps: int) -> float:
        tokens = self.windows[0].shape[0] * (self.windows[0].shape[1] - 1)
        began = time.perf_counter()
        for _ in range(steps):
            self.step()
        return steps * tokens / (time.perf_counter() - began)


class _Orchard:
    """The pretrain stage's own step on a copy of the reference's initial weights."""

    def __init__(
        self,
        config: Any,
        windows: list[torch.Tensor],
        initial: torch.nn.Module,
        amp: torch.dtype | None,
        *,
        compile: bool,
    ) -> None:
        import torch
        from transformers import LlamaForCausalLM

        from training.core.pretrain import choose_attention, make_optimizer, make_train_step

        device = torch.device("cpu")
        self.model = LlamaForCausalLM(config)
        self.model.load_state_dict(initial.state_dict())
        self.attention = choose_attention(device, compile, config.max_position_embeddings)
        self.model.set_attn_implementation(self.attention)
        optimizer = make_optimizer(self.model, 3e-4, 0.1, device)
        self.train_step = make_train_step(
            self.model, optimizer, amp_dtype=amp, grad_clip=1.0, compile=compile
        )
        self.amp = amp
        self.windows = windows
        self.cursor = 0
        self.warmup_seconds = 0.0
        fused = "fused" if optimizer.defaults.get("fused") else "foreach"
        self.recipe = (
            f"pretrain.make_train_step: AdamW {fused}, clip 1.0, own loss, "
            f"{self.attention} attention" + (", torch.compile" if compile else "")
        )

    def initial_loss(self) -> float:
        """Loss on the same targets as the reference's: the first T tokens of the first window."""
        import torch

        from training.core.pretrain import causal_lm_loss

        with torch.no_grad():
            return causal_lm_loss(self.model, self.windows[0][:, :-1], self.amp).item()

    def step(self) -> None:
        window = self.windows[self.cursor % len(self.windows)]
        self.cursor += 1
        self.train_step([window], 3e-4)

    def warm_up(self) -> None:
        """Two steps: the first compiles (forward and backward), the second runs compiled."""
        began = time.perf_counter()
        self.step()
        self.step()
        self.warmup_seconds = time.perf_counter() - began

    def tokens_per_sec(self, steps: int) -> float:
        tokens = self.windows[0].shape[0] * (self.windows[0].shape[1] - 1)
        began = time.perf_counter()
        for _ in range(steps):
            self.step()
        return steps * tokens / (time.perf_counter() - began)
