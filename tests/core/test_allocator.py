"""Freed memory kept for reuse: a block freed and allocated again costs no new page faults."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Allocates and frees a 64 MiB array ten times and prints the page faults that took, after a
# first allocation that grows the heap either way.
SCRIPT = """
import resource, sys
import numpy as np
from training.core.allocator import freed_memory_kept, keep_freed_memory
if sys.argv[1] == "kept":
    assert keep_freed_memory() and freed_memory_kept()
else:
    assert not freed_memory_kept()
np.ones(8 << 20).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    np.ones(8 << 20).sum()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only"
)
def test_freed_blocks_are_reused_without_page_faults() -> None:
    default, kept = page_faults("default"), page_faults("kept")
    # By default each 64 MiB block is a fresh mapping: 16,384 faults of 4 KiB pages (fewer where
    # transparent huge pages are always on). Kept, the same pages serve every allocation.
    assert default > 0
    assert kept <= max(50, default // 20), (default, kept)


def test_the_test_process_itself_is_left_alone() -> None:
    """Only processes that run one run and exit change their allocator; in-process runs (tests,
    the in-process demo) leave it as it was."""
    from training.core.allocator import freed_memory_kept

    assert not freed_memory_kept()
