"""The CPU class and native bf16 follow the CPU's flags and the ISA PyTorch and oneDNN may use."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from medsight.core import hardware

ICE_LAKE = {"avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"}  # AVX-512 without bf16
SAPPHIRE_RAPIDS = ICE_LAKE | {"avx512_bf16", "amx_bf16", "amx_tile"}


@pytest.fixture
def cpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """A pretend x86 CPU whose flags, PyTorch capability and oneDNN answer the test sets."""
    monkeypatch.setattr(hardware.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    hardware.native_bf16.cache_clear()
    hardware.cpu_class.cache_clear()
    yield monkeypatch
    hardware.native_bf16.cache_clear()
    hardware.cpu_class.cache_clear()


def _flags(monkeypatch: pytest.MonkeyPatch, flags: set[str]) -> None:
    monkeypatch.setattr(hardware, "_cpuinfo", lambda: ("pretend", frozenset(flags)))


def test_avx512_without_bf16_instructions_is_not_native_bf16(cpu: pytest.MonkeyPatch) -> None:
    """oneDNN says bf16 is supported on Ice Lake (it emulates it): that is not native."""
    _flags(cpu, ICE_LAKE)
    assert hardware.native_bf16() is False
    assert hardware.cpu_class() == "AVX-512"


def test_bf16_and_amx_flags_make_the_classes(cpu: pytest.MonkeyPatch) -> None:
    _flags(cpu, ICE_LAKE | {"avx512_bf16"})
    assert hardware.native_bf16() is True
    assert hardware.cpu_class() == "AVX-512 BF16"
    hardware.native_bf16.cache_clear(), hardware.cpu_class.cache_clear()
    _flags(cpu, SAPPHIRE_RAPIDS)
    assert hardware.cpu_class() == "AMX"


@pytest.mark.parametrize(("isa", "native", "kind"), [("AVX2", False, "AVX-512"), ("avx512_core", False, "AVX-512"),
                                                     ("AVX512_CORE_BF16", True, "AVX-512 BF16"),
                                                     ("AVX512_CORE_AMX", True, "AMX")])  # fmt: skip
def test_a_capped_onednn_isa_caps_the_class(cpu: pytest.MonkeyPatch, isa: str, native: bool, kind: str) -> None:
    _flags(cpu, SAPPHIRE_RAPIDS)
    cpu.setenv("ONEDNN_MAX_CPU_ISA", isa)
    assert hardware.native_bf16() is native
    assert hardware.cpu_class() == kind


def test_avx2_kernels_are_never_native_bf16(cpu: pytest.MonkeyPatch) -> None:
    _flags(cpu, SAPPHIRE_RAPIDS)
    cpu.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert hardware.native_bf16() is False
    assert hardware.cpu_class() == "AVX2"


def test_onednn_decides_where_there_are_no_flags(cpu: pytest.MonkeyPatch) -> None:
    _flags(cpu, set())
    assert hardware.native_bf16() is True
    cpu.setattr(hardware.platform, "machine", lambda: "aarch64")
    hardware.native_bf16.cache_clear()
    cpu.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False, raising=False)
    assert hardware.native_bf16() is False
