"""``python -m training.core.bench <name> [...]``: run one benchmark and print its JSON.

Each benchmark module has ``main(argv) -> dict``; figures are ratios against a reference
measured in the same process, never absolute timings compared across machines.
"""

from __future__ import annotations

import importlib
import json
import sys

BENCHMARKS = {
    "pretrain": "training.core.bench.pretrain",
    "generate": "training.core.bench.generate",
    "webdata": "training.core.bench.webdata",
    "rl": "training.core.bench.rl",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in BENCHMARKS:
        print(f"usage: python -m training.core.bench {{{','.join(BENCHMARKS)}}} [options]")
        return 2
    module = importlib.import_module(BENCHMARKS[argv[0]])
    print(json.dumps(module.main(argv[1:]), indent=2))
    return 0


if __name__ == "__main__":
    from training.core.allocator import keep_freed_memory

    keep_freed_memory()  # as in the workers; both sides of a benchmark share the process
    sys.exit(main())
