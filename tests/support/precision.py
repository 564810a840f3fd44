"""What a stage's ``dtype="auto"`` becomes on this machine's CPU, for tests that check results.

It depends on the CPU (bf16 where it has native bf16 matmuls), so the tests ask the same
function the stages ask instead of assuming fp32.
"""

from __future__ import annotations


def auto_dtype_on_cpu() -> str:
    import torch

    from training.core.device import autocast_dtype, dtype_name

    return dtype_name(autocast_dtype(torch.device("cpu"), "auto"))
