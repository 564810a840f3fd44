"""Choosing where and in which precision a training stage runs.

``pick_device`` prefers CUDA, then Apple's MPS, then the CPU. ``autocast_dtype`` decides whether
the forward pass runs under bf16 autocast: weights, gradients and optimizer state always stay in
fp32 (autocast only lowers the precision of matmul inputs), so a checkpoint never depends on the
precision it was trained in.

torch is imported inside the functions: stage configs import this module's callers while the web
process builds its forms, and that must not load torch.
"""

from __future__ import annotations

import functools
import os
import platform
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

if TYPE_CHECKING:
    import torch

DevicePreference = Literal["auto", "cpu", "cuda", "mps"]
DtypePreference = Literal["auto", "fp32", "bf16"]
# /proc/cpuinfo flags of the x86 instructions that make bf16 matmuls faster than fp32 ones.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def device_field() -> Any:
    """Every training stage's ``device`` setting, as :func:`pick_device` resolves it."""
    return Field(
        "auto", description="Where to train: auto prefers a CUDA GPU, then Apple MPS, then CPU."
    )


def dtype_field() -> Any:
    """Every training stage's ``dtype`` setting, as :func:`autocast_dtype` resolves it."""
    return Field(
        "auto",
        description=(
            "Compute precision: auto uses bf16 autocast on GPUs that support it and on CPUs with "
            "native bf16 matmuls (AVX512-BF16 or AMX), fp32 elsewhere, where bf16 is emulated "
            "and slower. Weights stay fp32."
        ),
    )


def pick_device(preference: str = "auto") -> torch.device:
    """The device to train on: CUDA, then MPS, then CPU for ``"auto"``.

    Naming an accelerator that is not there is an error (ValueError), not a silent fallback to
    the CPU: a run that was meant for a GPU would otherwise take hours instead of minutes.
    """
    import torch

    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA GPU is available")
    if preference == "mps" and not _mps_available():
        raise ValueError("device 'mps' was requested but Apple's MPS backend is not available")
    if preference not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {preference!r} (expected auto, cpu, cuda or mps)")
    return torch.device(preference)


def autocast_dtype(device: torch.device, preference: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``device``, or None to train in plain fp32.

    ``"auto"`` picks bf16 on CUDA GPUs that support it (Ampere and newer) and on x86 CPUs with
    native bf16 matmul instructions (AVX512-BF16 or AMX), where oneDNN's bf16 kernels run two to
    four times faster than fp32 ones. Without them bf16 is emulated and slower than fp32, so other
    CPUs, and MPS, stay in fp32 unless bf16 is asked for.
    """
    import torch

    if preference == "fp32":
        return None
    if preference == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if device.type == "cpu" and _cpu_has_native_bf16():
            return torch.bfloat16
        return None
    if preference == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("this GPU does not support bf16; use dtype 'fp32' or 'auto'")
        return torch.bfloat16
    raise ValueError(f"unknown dtype {preference!r} (expected auto, fp32 or bf16)")


def dtype_name(dtype: torch.dtype | None) -> str:
    """``"bf16"`` or ``"fp32"``: how a run's precision is shown in results and logs."""
    if dtype is None:
        return "fp32"
    return {"torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(str(dtype), str(dtype))


def describe_device(device: torch.device | None = None) -> dict[str, Any]:
    """JSON-serialisable facts about ``device`` (default: the ``"auto"`` choice) for run logs."""
    import torch

    device = device or pick_device("auto")
    info: dict[str, Any] = {
        "type": device.type,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info.update(
            name=props.name,
            capability=f"{props.major}.{props.minor}",
            memory_gb=round(props.total_memory / 2**30, 1),
            bf16=torch.cuda.is_bf16_supported(),
            device_count=torch.cuda.device_count(),
        )
    elif device.type == "cpu":
        info.update(
            name=_cpu_name(),
            cpu_count=os.cpu_count(),
            bf16_matmul=_cpu_has_native_bf16(),
        )
    else:
        info["name"] = device.type
    return info


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def _cpu_name() -> str:
    """The CPU model ("Intel(R) Xeon(R) ..."); platform.processor() is empty on most Linuxes."""
    return _cpuinfo_value("model name") or platform.processor() or platform.machine()


def _cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 matmul instructions (AVX512-BF16 or AMX) and oneDNN can use them.

    oneDNN's own check (``_is_mkldnn_bf16_supported``) is true on any AVX-512 CPU, where bf16 is
    emulated with conversions and runs slower than fp32, so the instruction flags decide. They
    are read from /proc/cpuinfo, which only Linux has; elsewhere the answer is no.
    """
    import torch

    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except (AttributeError, RuntimeError):
        return False
    return bool(_cpu_flags() & NATIVE_BF16_FLAGS)


@functools.cache
def _cpu_flags() -> frozenset[str]:
    return _read_cpu_flags("/proc/cpuinfo")


def _read_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The instruction-set flags the kernel lists for the first CPU (empty where unknown)."""
    return frozenset((_cpuinfo_value("flags", cpuinfo) or "").split())


def _cpuinfo_value(key: str, cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """The first CPU's ``key`` line in ``cpuinfo``, or None (no such line, or no such file)."""
    try:
        with open(cpuinfo, encoding="utf-8") as fh:
            for line in fh:
                if line.startswith(key):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return None
