"""What this machine's CPU can do, as PyTorch and oneDNN will use it (read once, cached)."""

from __future__ import annotations

import platform
from functools import cache

import torch

__all__ = ["cpu_class", "cpu_model", "native_bf16"]


@cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """The CPU's model name and feature flags from ``/proc/cpuinfo`` (empty where there is none)."""
    model, flags = "", frozenset[str]()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = frozenset(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    return model, flags


def cpu_model() -> str:
    """The CPU's model name (``platform.processor()`` where /proc/cpuinfo has none)."""
    return _cpuinfo()[0] or platform.processor()


@cache
def native_bf16() -> bool:
    """True when oneDNN runs bf16 natively on this CPU (AVX-512 BF16 or AMX), not emulated."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@cache
def cpu_class() -> str:
    """The CPU's instruction-set class as PyTorch uses it: ``AMX``, ``AVX-512 BF16``, ``AVX-512``, ``AVX2``...

    Follows what PyTorch and oneDNN are allowed to use (``ATEN_CPU_CAPABILITY``,
    ``ONEDNN_MAX_CPU_ISA``), so a capped run reports the class it behaves as.
    """
    capability = torch.backends.cpu.get_cpu_capability()
    if capability.startswith("AVX512"):
        if native_bf16() and "amx_bf16" in _cpuinfo()[1]:
            return "AMX"
        return "AVX-512 BF16" if native_bf16() else "AVX-512"
    if capability == "AVX2":
        return "AVX2"
    return f"{platform.machine()} {capability}".strip()
