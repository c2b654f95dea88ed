"""Numeric mode by measurement: fp32 or bf16 autocast, contiguous or channels-last.

Which mode trains a network fastest depends on the CPU at hand, not on its name: bf16 autocast
with channels-last is 1.3-2x faster than fp32 on CPUs with native bf16 (AVX-512 BF16, AMX), but
bf16 on an AVX2-only CPU is emulated and 10x slower, and there fp32 channels-last beats fp32
contiguous. ``precision: auto`` / ``channels_last: auto`` therefore time a few training steps
of the actual model on a real batch in each candidate mode and keep the fastest. The choice is
cached per machine, torch version, model and batch shape (``~/.cache/medsight/numeric-modes.json``,
or ``$MEDSIGHT_CACHE_DIR``), so it is measured once, and it is logged with the figures behind it.
bf16 is a candidate only where the CPU runs it natively. 3D networks are timed in the
channels-last-3d layout too (on the AVX2 EPYC a 3D U-Net's training step took 0.64 s there against
0.84 s contiguous, for another plan's U-Net it was no faster), their instance norms run as the
equal group norms, one group per channel, whose CPU kernels keep that layout.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medsight.core.errors import ConfigError, InputError
from medsight.core.hardware import cpu_class, cpu_model, native_bf16
from medsight.models.predict import autocast

__all__ = [
    "NumericMode",
    "cache_dir",
    "channels_last",
    "choose_mode",
    "cpu_class",
    "guard_bf16_conv3d",
    "instance_norms_as_group_norms",
    "native_bf16",
]

log = logging.getLogger(__name__)

_CACHE_VERSION = 1
_TIMED_STEPS = 2  # after one warm-up step; the fastest step counts (robust to a busy machine)
# modes within this factor of the fastest are timed again, up to _MORE_STEPS more turns: on a noisy
# 2-core VM (Intel Xeon, AVX-512 BF16 without AMX) the fastest of two fp32 steps of ResNet-18 ranged
# over 26-50 img/s from one probe to the next while bf16 held at ~35, and a single probe picked the
# slower mode
_CLOSE = 1.3
_MORE_STEPS = 4
_MEASURE_BATCH = 16  # at most this many images per measured step: the ranking holds, the wait shrinks


@dataclass(frozen=True)
class NumericMode:
    """How the engine runs a network: autocast dtype (None = fp32) and memory format."""

    amp_dtype: torch.dtype | None
    channels_last: bool
    reason: str = ""
    speeds: tuple[tuple[str, float], ...] = ()  # measured training images/s of each candidate

    @property
    def images_per_second(self) -> float | None:
        """The measured training speed of this mode (None when it was configured, not measured)."""
        return dict(self.speeds).get(self.label)

    @property
    def label(self) -> str:
        """``"bf16, channels-last"``, ``"fp32, contiguous"``..."""
        dtype = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]
        return f"{dtype}, {'channels-last' if self.channels_last else 'contiguous'}"


def cache_dir() -> Path:
    """Where medsight keeps per-machine facts: ``$MEDSIGHT_CACHE_DIR``, else ``$XDG_CACHE_HOME/medsight``."""
    explicit = os.environ.get("MEDSIGHT_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "medsight"


@cache
def _machine() -> str:
    return f"{cpu_model()}|{cpu_class()}|{os.cpu_count()} cpus|torch {torch.__version__}"


def _machine_key() -> str:
    """The machine and the threads training gets (a run under ``OMP_NUM_THREADS=1`` or ``taskset``
    trains at another speed and may prefer another mode)."""
    return f"{_machine()}|{torch.get_num_threads()} threads"


def _candidates(precision: str, channels_last: str, device: torch.device, ndim: int) -> list[NumericMode]:
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("fp16 autocast is for CUDA; on CPU use bf16 or fp32")
    fixed = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision in fixed:
        dtypes: list[torch.dtype | None] = [fixed[precision]]
    elif device.type == "cuda":
        dtypes = [torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16]
    else:
        dtypes = [None, torch.bfloat16] if native_bf16() else [None]  # emulated bf16 is never faster
    layouts = {"on": [True], "off": [False]}.get(channels_last)
    if ndim not in (4, 5):  # channels-last is a layout of images (NCHW) and volumes (NCDHW)
        layouts = [False]
    if layouts is None:
        # on GPUs channels-last pays with mixed precision (tensor cores) for images; there is no
        # measuring there, and volumes stay contiguous
        layouts = [dtypes[0] is not None and ndim == 4] if device.type == "cuda" else [False, True]
    return [NumericMode(d, cl) for d in dtypes for cl in layouts]


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring the numeric-mode cache %s (%s); it will be rewritten", path, exc)
        return {}
    return data if isinstance(data, dict) and data.get("version") == _CACHE_VERSION else {}


def _write_cache(path: Path, key: str, entry: dict[str, Any]) -> None:
    from medsight.io.atomic import atomic_file

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache(path) or {"version": _CACHE_VERSION, "modes": {}}
        data.setdefault("modes", {})[key] = entry
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    except (OSError, InputError) as exc:  # a read-only home must not stop training
        log.warning("could not cache the numeric mode in %s (%s); it will be measured again next time", path, exc)


def channels_last(item: nn.Module | torch.Tensor) -> nn.Module | torch.Tensor:
    """``item`` in the channels-last layout of its rank: ``torch.channels_last`` for 4D tensors and
    2D networks, ``torch.channels_last_3d`` for 5D tensors and 3D networks (the 2D format on a
    Conv3d raises "required rank 4 tensor"; a 3D network's instance norms become group norms, see
    :func:`instance_norms_as_group_norms`); anything else unchanged."""
    if isinstance(item, torch.Tensor):
        layout = {4: torch.channels_last, 5: torch.channels_last_3d}.get(item.ndim)
        return item.contiguous(memory_format=layout) if layout is not None else item
    ranks = {p.ndim for p in item.parameters() if p.ndim in (4, 5)}
    if ranks == {4}:
        return item.to(memory_format=torch.channels_last)
    if ranks == {5}:
        instance_norms_as_group_norms(item)
        return item.to(memory_format=torch.channels_last_3d)
    return item  # no convolutions, or 2D and 3D ones mixed: left as it is


def instance_norms_as_group_norms(model: nn.Module) -> int:
    """Replace, in place, every instance norm of ``model`` that keeps no running statistics by a
    group norm of one group per channel: the same normalisation (per sample and channel) with the
    same parameters (the very tensors, so an optimiser made before still updates them, and the
    same state-dict keys), but a CPU kernel that reads channels-last volumes where the instance
    norm's copies every one back to contiguous (a fifth of a 3D U-Net's training step). Returns
    how many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.modules.instancenorm._InstanceNorm) or child.track_running_stats:
                continue
            group = nn.GroupNorm(child.num_features, child.num_features, eps=child.eps, affine=child.affine)
            if child.affine:
                group.weight, group.bias = child.weight, child.bias
            setattr(parent, name, group)
            replaced += 1
    return replaced


def _shallow_to_fp32(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    inputs = args[0]
    if inputs.ndim == 5 and inputs.shape[2] == 2 and torch.is_autocast_enabled(inputs.device.type):
        off = torch.autocast(inputs.device.type, enabled=False)
        off.__enter__()
        module._medsight_autocast_off.append(off)  # type: ignore[union-attr]
        return (inputs.float(), *args[1:])
    return None


def _restore_autocast(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
    if module._medsight_autocast_off:  # type: ignore[union-attr]
        module._medsight_autocast_off.pop().__exit__(None, None, None)  # type: ignore[union-attr]


def guard_bf16_conv3d(model: nn.Module) -> int:
    """Run in fp32 the 3D convolutions that PyTorch's CPU bf16 kernels get wrong; returns how many
    convolutions are watched.

    Under bf16 autocast on the CPU (PyTorch 2.13), the weight gradient of a ``Conv3d`` whose input
    is 2 voxels deep and whose kernel is deeper than 1 comes out wrong: off by orders of magnitude,
    at times infinite or NaN, while its output and input gradient are right. A U-Net whose patch
    halves to 2 slices has such convolutions at its bottleneck; training then skips steps or, worse,
    takes them with a wrong gradient. Each watched convolution runs in fp32 when (and only when) its
    input is 2 deep; the rest of the network keeps bf16."""
    watched = 0
    for module in model.modules():
        deep_kernel = isinstance(module, nn.Conv3d) and module.kernel_size[0] > 1
        if deep_kernel and not hasattr(module, "_medsight_autocast_off"):
            module._medsight_autocast_off = []  # type: ignore[assignment]
            module.register_forward_pre_hook(_shallow_to_fp32)
            module.register_forward_hook(_restore_autocast)
            watched += 1
    return watched


def _trial(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss_fn: Callable, mode: NumericMode
) -> Callable[[], float]:
    """A copy of ``model`` set up in ``mode``; calling the result runs one training step
    (forward, loss, backward, optimiser) and returns its seconds."""
    trial = copy.deepcopy(model)
    trial.train()
    if mode.channels_last:
        trial = channels_last(trial)
        inputs = channels_last(inputs)
    optimizer = torch.optim.SGD(trial.parameters(), lr=1e-6)

    def step() -> float:
        started = time.perf_counter()
        with autocast(inputs.device, mode.amp_dtype):
            logits = trial(inputs)
        loss = loss_fn(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if inputs.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    return step


def _speeds(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss_fn: Callable, modes: Sequence[NumericMode]
) -> dict[str, float]:
    """Training images per second in each mode: one warm-up step each (oneDNN picks its kernels),
    then timed steps taken in turns, so drift on a busy machine hits every mode alike; the
    fastest step of each counts. Modes that come within :data:`_CLOSE` of the fastest are timed
    again, in turns, until one stands clear or :data:`_MORE_STEPS` more turns are spent."""
    steps = {mode.label: _trial(model, inputs, targets, loss_fn, mode) for mode in modes}
    for step in steps.values():
        step()
    fastest = dict.fromkeys(steps, float("inf"))
    contenders = list(steps)
    for turn in range(_TIMED_STEPS + _MORE_STEPS):
        if turn >= _TIMED_STEPS:
            best = min(fastest.values())
            contenders = [label for label in contenders if fastest[label] <= best * _CLOSE]
            if len(contenders) < 2:
                break
        for label in contenders:
            fastest[label] = min(fastest[label], steps[label]())
    return {label: len(inputs) / seconds for label, seconds in fastest.items()}


def choose_mode(
    precision: str,
    channels_last: str,
    device: torch.device,
    *,
    model: nn.Module | None = None,
    batch: tuple[torch.Tensor, torch.Tensor] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    model_name: str | None = None,
) -> NumericMode:
    """The numeric mode to train (and validate) with.

    ``fp32``/``bf16``/``fp16`` and ``on``/``off`` are taken as given. ``auto`` on a CPU times
    each candidate (fp32; bf16 autocast only where the CPU runs bf16 natively; contiguous and
    channels-last for 2D inputs) on ``model`` with ``batch`` and ``loss_fn``, and keeps the
    fastest; the result is cached per machine, model and batch shape. Without a model to time,
    ``auto`` falls back to the rule: bf16 with channels-last where bf16 is native, else fp32
    with channels-last. On GPUs ``auto`` is bf16 (fp16 where bf16 is missing) with channels-last.

    Args:
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (CUDA only).
        channels_last: ``auto``, ``on`` or ``off``.
        device: Where training runs.
        model: The network to time (it is copied; its weights are not touched).
        batch: ``(inputs, targets)`` as the loss sees them; only the first few items are used.
        loss_fn: The training loss.
        model_name: Names the network in the cache key (the class name by default).

    Raises:
        ConfigError: fp16 on a CPU.
    """
    ndim = batch[0].ndim if batch is not None else 4
    candidates = _candidates(precision, channels_last, device, ndim)
    if len(candidates) == 1:
        return NumericMode(candidates[0].amp_dtype, candidates[0].channels_last, "as configured")
    if model is None or batch is None or loss_fn is None:
        dtypes = [m.amp_dtype for m in candidates]
        dtype = torch.bfloat16 if torch.bfloat16 in dtypes else dtypes[0]
        return NumericMode(dtype, any(m.channels_last for m in candidates), "rule (no model to time)")
    from medsight.engine.distributed import world_size

    if world_size() > 1:  # every process must train alike: rank 0 measures, the others take its choice
        return _shared_choice(lambda: _measure(candidates, model, batch, loss_fn, device, model_name))
    return _measure(candidates, model, batch, loss_fn, device, model_name)


def _shared_choice(measure: Callable[[], NumericMode]) -> NumericMode:
    import torch.distributed as dist

    chosen = [measure() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(chosen, src=0)
    mode = chosen[0]
    assert mode is not None
    return NumericMode(mode.amp_dtype, mode.channels_last, f"{mode.reason} (process 0's choice)", mode.speeds)


def _measure(
    candidates: list[NumericMode],
    model: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    device: torch.device,
    model_name: str | None,
) -> NumericMode:
    inputs, targets = (t[:_MEASURE_BATCH].to(device) for t in batch)
    name = model_name or type(model).__name__
    parameters = sum(p.numel() for p in model.parameters())
    shape = "x".join(str(s) for s in inputs.shape)
    labels = ",".join(m.label for m in candidates)
    digest = hashlib.sha256(f"{_machine_key()}|{name}|{parameters}|{shape}|{labels}".encode()).hexdigest()[:16]
    path = cache_dir() / "numeric-modes.json"
    cached = _read_cache(path).get("modes", {}).get(digest)
    by_label = {m.label: m for m in candidates}
    if isinstance(cached, dict) and cached.get("mode") in by_label:
        chosen = by_label[cached["mode"]]
        reason = f"measured on this machine before ({cached.get('figures', '')}; cache {path})"
        log.info("numeric mode %s for %s: %s", chosen.label, name, reason)
        known = cached.get("speeds") if isinstance(cached.get("speeds"), dict) else {}
        speeds = tuple((k, float(v)) for k, v in known.items() if isinstance(v, int | float))
        return NumericMode(chosen.amp_dtype, chosen.channels_last, reason, speeds)
    started = time.perf_counter()
    speeds = _speeds(model, inputs, targets, loss_fn, candidates)
    best = max(candidates, key=lambda m: speeds[m.label])
    figures = ", ".join(f"{label} {speed:.1f} img/s" for label, speed in speeds.items())
    reason = f"fastest of {figures} on this {cpu_class()} CPU (measured in {time.perf_counter() - started:.0f} s)"
    log.info("numeric mode %s for %s: %s", best.label, name, reason)
    _write_cache(path, digest, {"mode": best.label, "figures": figures, "speeds": speeds, "model": name,
                                "shape": shape, "machine": _machine_key()})  # fmt: skip
    return NumericMode(best.amp_dtype, best.channels_last, reason, tuple(speeds.items()))


def first_batch(data: Sequence[Any] | torch.utils.data.Dataset, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``size`` items of a map-style dataset of ``(input, target)``, collated."""
    from torch.utils.data import default_collate

    count = min(size, len(data))  # type: ignore[arg-type]
    return default_collate([data[i] for i in range(count)])
