"""What this machine's CPU can do, as PyTorch and oneDNN will use it (read once, cached)."""

from __future__ import annotations

import os
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


# oneDNN's ISA names below which bf16 has no native instructions (``ONEDNN_MAX_CPU_ISA`` caps)
_NO_BF16_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


@cache
def native_bf16() -> bool:
    """True when oneDNN runs bf16 natively on this CPU (AVX-512 BF16 or AMX), not emulated.

    oneDNN reports bf16 as supported on any AVX-512 CPU (Skylake, Ice Lake), where it emulates it
    at a fraction of fp32's speed; on x86 the CPU's own flags (``avx512_bf16``, ``amx_bf16``) and
    the ISA PyTorch and oneDNN are allowed (``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``) decide.
    """
    try:
        supported = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
    if not supported or platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return supported
    flags = _cpuinfo()[1]
    if not flags:  # no /proc/cpuinfo to read: trust oneDNN
        return supported
    if not flags & {"avx512_bf16", "amx_bf16"}:
        return False
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return False
    return os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").strip().upper() not in _NO_BF16_ISAS


@cache
def cpu_class() -> str:
    """The CPU's instruction-set class as PyTorch uses it: ``AMX``, ``AVX-512 BF16``, ``AVX-512``, ``AVX2``...

    Follows what PyTorch and oneDNN are allowed to use (``ATEN_CPU_CAPABILITY``,
    ``ONEDNN_MAX_CPU_ISA``), so a capped run reports the class it behaves as.
    """
    capability = torch.backends.cpu.get_cpu_capability()
    if capability.startswith("AVX512"):
        capped = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").strip().upper() == "AVX512_CORE_BF16"
        if native_bf16() and "amx_bf16" in _cpuinfo()[1] and not capped:
            return "AMX"
        return "AVX-512 BF16" if native_bf16() else "AVX-512"
    if capability == "AVX2":
        return "AVX2"
    return f"{platform.machine()} {capability}".strip()
