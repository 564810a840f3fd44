"""Run one training stage from the shell, without Django or Celery.

    python -m training.core tokenizer --config cfg.json --input corpus=a.txt --out out/

``--config`` is a JSON object validated by the stage's pydantic model (defaults when omitted);
``--input name=path`` may be repeated, and repeated names collect into a list. Progress goes to
stderr, the result JSON to stdout. Exit codes: 0 done, 1 the stage failed on its input (for
example a bad corpus), 2 bad command line or config.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Stage name -> (module, config class). The module provides ``run(cfg, inputs, out_dir, reporter)``
# and is imported only once the stage is chosen, so ``--help`` does not load torch or transformers.
STAGES: dict[str, tuple[str, str]] = {
    "tokenizer": ("training.core.tokenizer", "TokenizerConfig"),
    "corpus": ("training.core.pipeline.run", "CorpusConfig"),
    "pretrain": ("training.core.pretrain", "PretrainConfig"),
    "sft": ("training.core.sft", "SFTConfig"),
    "reward": ("training.core.reward", "RewardConfig"),
    "ppo": ("training.core.ppo", "PPOConfig"),
    "grpo": ("training.core.grpo", "GRPOConfig"),
    "factuality": ("training.core.factuality", "FactualityConfig"),
}


def load_stage(name: str) -> tuple[Any, Any]:
    """The stage's ``(config class, run function)``."""
    module_name, config_name = STAGES[name]
    module = importlib.import_module(module_name)
    return getattr(module, config_name), module.run


def parse_inputs(pairs: Sequence[str]) -> dict[str, list[Path]]:
    inputs: dict[str, list[Path]] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--input expects name=path, got {pair!r}")
        inputs.setdefault(name, []).append(Path(path))
    return inputs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.core", description=__doc__.split("\n")[0]
    )
    parser.add_argument("stage", choices=sorted(STAGES))
    parser.add_argument("--config", type=Path, help="JSON file with the stage config")
    parser.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="an input file; repeat for several (same name: a list)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        inputs = parse_inputs(args.input)
    except ValueError as exc:
        parser.error(str(exc))  # exits with code 2

    from pydantic import ValidationError

    from training.core.reporting import ConsoleReporter

    config_cls, run = load_stage(args.stage)
    try:
        raw = json.loads(args.config.read_text()) if args.config else {}
        cfg = config_cls.model_validate(raw)
    except (OSError, json.JSONDecodeError) as exc:
        print(f"error: cannot read config {args.config}: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"error: invalid {args.stage} config:\n{exc}", file=sys.stderr)
        return 2

    try:
        result = run(cfg, inputs, args.out, ConsoleReporter())
    except ValueError as exc:  # a refusal of the input (CorpusError is one): say why, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    from training.core.allocator import keep_freed_memory

    keep_freed_memory()  # this process runs one stage and exits
    sys.exit(main())
