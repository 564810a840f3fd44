"""Keeping freed memory for reuse in a process that runs one training run and exits.

glibc's malloc serves every block of 32 MiB and more (and, until its threshold has adapted,
smaller ones too) with a fresh ``mmap`` and hands it back with ``munmap`` when it is freed. A
training step on the CPU frees its activations and allocates them again at the next step, so the
kernel maps and zeroes them page by page at every step: at the pretraining benchmark's shape,
80,000 to 100,000 page faults per eager step (about 25,000 compiled). Serving all blocks from the
heap and keeping the freed ones there took that to almost none, and gave 11% more tokens per
second for an eager fp32 step and 21-35% for an eager bf16 one (fresh processes, a 2-core CPU;
less once ``torch.compile`` plans the buffers). It is what PyTorch's performance guide gets by
preloading jemalloc or tcmalloc, with the C library already loaded.

The setting is process-wide and the memory stays with the process until it exits, so it is made
only in processes that run one run: Celery's worker processes (``training.signals``), the stage
command line (``python -m training.core``), the processes of a distributed run and the
benchmarks (both sides of each, so their ratios compare the steps). Elsewhere (another C library,
another system) nothing changes.
"""

from __future__ import annotations

import ctypes
import platform

# mallopt's parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# mallopt takes a C int. Free space above this at the top of the heap still goes back.
TRIM_THRESHOLD_BYTES = 2**31 - 1

_kept = False


def keep_freed_memory() -> bool:
    """Serve every block from the heap and keep freed ones there; True once that is in effect."""
    global _kept
    if _kept:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # mallopt returns 1 on success: no more mmapped blocks, and no trimming of the heap's top.
    _kept = libc.mallopt(M_MMAP_MAX, 0) == 1 and (
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    )
    return _kept


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` is in effect in this process."""
    return _kept
