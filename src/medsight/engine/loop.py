"""The training loop: one function, read top to bottom.

Mixed precision (autocast), channels-last, gradient accumulation and clipping, warm-up then
cosine or one-cycle learning rate, optional EMA of the weights, class-balanced sampling,
early stopping on a validation metric, a checkpoint every epoch with exact resume, and one
``metrics.jsonl`` line per epoch. Under ``torchrun`` (an initialised process group) the
model is wrapped in DistributedDataParallel, each rank sees its shard of the data, and only
rank 0 writes.
"""

from __future__ import annotations

import difflib
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, WeightedRandomSampler

from medsight.core.errors import ConfigError, TrainingError
from medsight.core.progress import Progress
from medsight.engine.config import EarlyStopping, TrainConfig, choose_device, choose_precision
from medsight.engine.distributed import broadcast_buffers
from medsight.engine.run import RunDir
from medsight.engine.tuning import NumericMode, choose_mode, cpu_class, first_batch, guard_bf16_conv3d
from medsight.engine.tuning import channels_last as to_channels_last
from medsight.models.predict import autocast

__all__ = ["TrainResult", "seed_everything", "train"]

log = logging.getLogger(__name__)

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_MAX_NONFINITE_STEPS = 5  # consecutive optimiser steps with non-finite gradients before training stops
Validate = Callable[[nn.Module], dict[str, float]]


@dataclass(frozen=True)
class TrainResult:
    """How the run ended."""

    run_dir: Path
    epochs_run: int
    best_epoch: int
    best_metric: float
    stopped_early: bool


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed Python, NumPy and PyTorch; optionally ask PyTorch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def _seed_worker(worker_id: int) -> None:
    """Give every DataLoader worker its own augmentation stream (MONAI transforms keep their own)."""
    info = torch.utils.data.get_worker_info()
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    augment = getattr(info.dataset, "augment", None) if info is not None else None
    if augment is not None and hasattr(augment, "set_random_state"):
        augment.set_random_state(seed)


class WeightedShardSampler(torch.utils.data.Sampler[int]):
    """Class-balanced sampling across processes: every rank draws the same weighted sample of
    the whole training set (same seed) and keeps its own interleaved shard of it, so the ranks
    together see one balanced epoch, as a single process would."""

    def __init__(self, weights: np.ndarray, rank: int, world: int, seed: int) -> None:
        self.weights = torch.as_tensor(np.asarray(weights), dtype=torch.double)
        self.rank, self.world, self.seed = rank, world, seed
        self.per_rank = math.ceil(len(self.weights) / world)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed)
        drawn = torch.multinomial(self.weights, self.per_rank * self.world, replacement=True, generator=generator)
        return iter(drawn[self.rank :: self.world].tolist())

    def __len__(self) -> int:
        return self.per_rank


def _loader(data: Dataset, config: TrainConfig, weights: np.ndarray | None, epoch_seed: int) -> DataLoader:
    distributed = dist.is_available() and dist.is_initialized()
    sampler = None
    if distributed and weights is not None:
        sampler = WeightedShardSampler(weights, dist.get_rank(), dist.get_world_size(), epoch_seed)
    elif distributed:
        sampler = DistributedSampler(data, shuffle=True, seed=epoch_seed, drop_last=False)
    elif weights is not None:
        generator = torch.Generator().manual_seed(epoch_seed)
        sampler = WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), len(weights), generator=generator)
    generator = torch.Generator().manual_seed(epoch_seed)
    return DataLoader(
        data,
        batch_size=config.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=config.num_workers,
        worker_init_fn=_seed_worker,
        generator=generator,
        persistent_workers=config.num_workers > 0,
        drop_last=False,
    )


def _schedule(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    total = max(1, config.epochs * steps_per_epoch)
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total)
    warmup = min(int(config.warmup_epochs * steps_per_epoch), total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if config.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class _Progress:
    """Where training stands: last finished epoch, best validation value, epochs without gain."""

    epoch: int = 0
    best_metric: float = math.nan
    best_epoch: int = 0
    stale: int = 0

    def update(self, epoch: int, value: float | None, mode: str | None) -> bool:
        """Record an epoch; True when it is the new best (always, without a validation metric).
        ``value`` None: the epoch was not validated, so the best and the patience wait."""
        self.epoch = epoch
        if mode is None:
            self.best_epoch = epoch
            return True
        if value is None:
            return False
        # the first epoch is the best so far even when its metric is undefined (best.pt always exists)
        better = self.best_epoch == 0 or (
            not math.isnan(value)
            and (
                math.isnan(self.best_metric)
                or (value < self.best_metric if mode == "min" else value > self.best_metric)
            )
        )
        if better:
            self.best_metric, self.best_epoch, self.stale = value, epoch, 0
        else:
            self.stale += 1
        return better


def _checkpoint(weights: dict, optimizer, scheduler, ema, state: _Progress) -> dict:  # noqa: ANN001
    """Everything needed to continue exactly: weights, optimizer, schedule, EMA, progress, RNGs."""
    return {
        **weights,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "ema_state": ema.state_dict() if ema is not None else None,
        "progress": vars(state).copy(),
        "epoch": state.epoch,
        "rng": {"torch": torch.get_rng_state(), "numpy": _numpy_rng_state(), "python": random.getstate()},
    }


def _numpy_rng_state() -> tuple:
    """NumPy's global RNG state as plain values (a checkpoint is loaded with ``weights_only=True``,
    which unpickles tensors, numbers, strings and containers, never arrays or other objects)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)


def _restore(run: RunDir, model: nn.Module, optimizer, scheduler, ema) -> _Progress:  # noqa: ANN001
    """Load ``last.pt`` into the training objects; return where training stood."""
    state = run.load(run.last)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if ema is not None and state.get("ema_state") is not None:
        ema.load_state_dict(state["ema_state"])
    torch.set_rng_state(state["rng"]["torch"])
    kind, keys, position, has_gauss, cached = state["rng"]["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    random.setstate(state["rng"]["python"])
    progress = _Progress(**state["progress"])
    run.truncate_metrics(progress.epoch)
    log.info("resuming %s after epoch %d", run.path, progress.epoch)
    return progress


def train(
    model: nn.Module,
    loss_fn: Loss,
    train_data: Dataset,
    *,
    config: TrainConfig,
    run_dir: str | Path,
    validate: Validate | None = None,
    sample_weights: np.ndarray | None = None,
    augment_batch: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    frozen: Sequence[nn.Parameter] = (),
    freeze_epochs: int = 0,
    resume: bool = False,
    progress: Progress | None = None,
    extra_config: dict | None = None,
    metric_names: Sequence[str] | None = None,
    mode: NumericMode | None = None,
    model_name: str | None = None,
) -> TrainResult:
    """Train ``model`` on ``train_data``; checkpoints and metrics go to ``run_dir``.

    Args:
        model: The network (moved to the chosen device here).
        loss_fn: ``loss_fn(logits, targets)``, e.g. ``ClassificationTask.loss``.
        train_data: Items ``(input, target)``.
        config: Options (epochs, learning rate, precision...).
        run_dir: Folder for this run; must be new unless ``resume``.
        validate: Called after every ``config.validate_every``-th epoch and the last one with
            the model to score (the EMA model when EMA is on); returns validation metrics, e.g.
            ``{"loss": .., "auc": ..}``. Early stopping and the best checkpoint look at validated
            epochs only (without early stopping the best is the last epoch, validated or not).
        sample_weights: Per-item sampling weights for class-balanced batches.
        augment_batch: ``augment(inputs, targets) -> (inputs, targets)``: random augmentation of
            each training batch on the device (e.g. :meth:`BatchAugmenter.with_targets
            <medsight.transforms.batch2d.BatchAugmenter.with_targets>`, or
            :class:`~medsight.transforms.batch3d.BatchAugmenter3D`, which moves label maps with
            their images); its share of the epoch is logged as ``augment_share``.
        frozen: Parameters left unchanged for the first ``freeze_epochs`` epochs (e.g. a
            pretrained backbone while the new head warms up); their gradients are dropped
            before each step, so neither the update nor weight decay touches them.
        freeze_epochs: How many epochs ``frozen`` stays frozen.
        resume: Continue from ``run_dir/last.pt`` exactly where it stopped.
        progress: ``progress(stage, done, total)`` after every step; the stage reads
            ``"training | epoch 3/10 · loss 0.4123 · val auc 0.871 (epoch 2)"``.
        extra_config: More facts to record in ``config.json`` (recipe, model, task...).
        metric_names: The names ``validate`` returns; when given, an ``early_stopping.metric``
            that is not among them (or ``loss``) is refused before anything is written.
        mode: The numeric mode (autocast dtype, channels-last) when the caller has chosen it;
            by default :func:`~medsight.engine.tuning.choose_mode` picks it from
            ``config.precision``/``config.channels_last``, timing the candidates. ``validate``
            runs in the same mode (under the same autocast, with the weights in the same layout).
        model_name: Names the network in the numeric-mode cache (its class name by default).
    """
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    device = choose_device(config.device)  # check the options before anything is written
    choose_precision(config.precision, device)  # fp16 on a CPU is refused before anything is written
    _check_stopping(config.early_stopping, validate, metric_names)
    run = RunDir(run_dir, writer=rank == 0)
    run.start(config.model_dump(), seed=config.seed, resume=resume, extra=extra_config)
    seed_everything(config.seed + rank, deterministic=config.deterministic)
    model = model.to(device)
    if mode is None:
        with _rng_untouched():  # measuring must not change what the seed makes of the run
            mode = choose_mode(config.precision, config.channels_last, device, model=model, loss_fn=loss_fn,
                               batch=first_batch(train_data, config.batch_size), model_name=model_name)  # fmt: skip
    amp_dtype, channels_last = mode.amp_dtype, mode.channels_last
    log.info("training in %s (%s)", mode.label, mode.reason)
    run.note("numeric_mode", {"mode": mode.label, "reason": mode.reason, "cpu_class": cpu_class()})
    if amp_dtype == torch.bfloat16 and device.type == "cpu":
        guard_bf16_conv3d(model)  # PyTorch's bf16 weight gradients of 2-deep 3D convolutions are wrong
    if channels_last:
        model = to_channels_last(model)
    # fused kernels: one pass over all parameters instead of a loop of small ops per tensor (AdamW on
    # two CPU cores: 2.3 ms a step instead of 13.7 for ResNet-10, 3.3 instead of 15.4 for a 3D U-Net)
    fused = device.type in ("cpu", "cuda")
    optimizer = (
        torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=fused)
        if config.optimizer == "adamw"
        else torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
            fused=fused,
        )
    )
    steps_per_epoch = math.ceil(len(_loader(train_data, config, sample_weights, 0)) / config.grad_accumulation)
    scheduler = _schedule(optimizer, config, steps_per_epoch)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay)) if config.ema_decay else None
    scaler = torch.amp.GradScaler(enabled=amp_dtype == torch.float16)
    wrapped = nn.parallel.DistributedDataParallel(model) if distributed else model
    tensorboard = _tensorboard(run) if config.tensorboard and rank == 0 else None

    progress_state = _Progress()
    stopping = config.early_stopping
    if resume and run.last.is_file():  # without a checkpoint yet, a resumed run starts from scratch
        progress_state = _restore(run, model, optimizer, scheduler, ema)

    epoch, stopped, stalled = progress_state.epoch, False, 0
    shown = ""  # the last validation figure, for the progress bar
    for epoch in range(progress_state.epoch + 1, config.epochs + 1):
        loader = _loader(train_data, config, sample_weights, config.seed * 1000 + epoch)
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        wrapped.train()
        started, waited, augmented, seen, total_loss, batches = time.perf_counter(), 0.0, 0.0, 0, 0.0, 0
        skipped = 0  # optimiser steps left out because the loss or its gradients were not finite
        optimizer.zero_grad(set_to_none=True)
        fetch = time.perf_counter()
        for step, (inputs, targets) in enumerate(loader, start=1):
            waited += time.perf_counter() - fetch
            inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            if augment_batch is not None:
                augmenting = time.perf_counter()
                with torch.no_grad():
                    inputs, targets = augment_batch(inputs, targets)
                augmented += time.perf_counter() - augmenting
            if channels_last:
                inputs = to_channels_last(inputs)
            with autocast(device, amp_dtype):
                logits = wrapped(inputs)
            loss = loss_fn(logits.float(), targets)
            scaler.scale(loss / config.grad_accumulation).backward()
            if step % config.grad_accumulation == 0 or step == len(loader):
                if epoch <= freeze_epochs:
                    for parameter in frozen:
                        parameter.grad = None
                scaler.unscale_(optimizer)
                norm = nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad_norm or math.inf)
                if not scaler.is_enabled() and not torch.isfinite(norm):
                    # (fp16's scaler skips such steps itself.) Every rank sees the same reduced gradients,
                    # so all of them skip this step together.
                    skipped += 1
                    stalled += 1
                    if stalled >= _MAX_NONFINITE_STEPS:
                        raise TrainingError(_diverged(epoch, step, stalled, run))
                else:
                    stalled = 0
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update_parameters(model)
            if torch.isfinite(loss.detach()):
                total_loss += float(loss.detach())
                batches += 1
            seen += len(inputs)
            if progress is not None:
                progress(f"training | epoch {epoch}/{config.epochs} · loss {total_loss / max(batches, 1):.4f}{shown}",
                         step, len(loader))  # fmt: skip
            fetch = time.perf_counter()
        seconds = time.perf_counter() - started
        record = {
            "epoch": epoch,
            "train_loss": _mean_across_ranks(total_loss / max(batches, 1), device),
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(seconds, 3),
            "images_per_second": round(seen * (dist.get_world_size() if distributed else 1) / max(seconds, 1e-9), 2),
            "data_wait_share": round(waited / max(seconds, 1e-9), 4),
            "augment_share": round(augmented / max(seconds, 1e-9), 4),
        }
        if skipped:
            record["skipped_steps"] = skipped
            log.warning("epoch %d: %d optimiser step(s) skipped: the loss or its gradients were not finite",
                        epoch, skipped)  # fmt: skip
        scored = ema.module if ema is not None else model
        validated = validate is not None and config.validates(epoch)
        if validated:
            broadcast_buffers(scored)  # score on every shard the model rank 0 saves
            scored.eval()
            with _rng_untouched(), torch.no_grad(), autocast(device, amp_dtype):  # how often: no change to training
                record.update({f"val_{k}": v for k, v in validate(scored).items()})
        key = f"val_{stopping.metric}" if stopping and validated else None
        if key is not None and key not in record:  # a typo would otherwise stop on NaN and keep epoch 1
            _check_stopping(stopping, validate, [k.removeprefix("val_") for k in record if k.startswith("val_")])
        value = record.get(key, math.nan) if key else math.nan
        if key is not None and math.isnan(value):
            log.warning("epoch %d: %s is undefined (NaN); it cannot improve on the best so far", epoch, key)
        figures = [k for k in record if k.startswith("val_") and k != "val_loss"]
        watched = key if key in record else (figures[0] if figures else None)
        if watched is not None and isinstance(record[watched], int | float):
            shown = f" · {watched.replace('_', ' ', 1)} {record[watched]:.3f} (epoch {epoch})"
        improved = progress_state.update(epoch, value if validated else None, stopping.mode if stopping else None)
        weights = {"model": model.state_dict(), "ema": ema.module.state_dict() if ema is not None else None}
        if improved:
            run.save(run.best, {**weights, "epoch": epoch, "metric": value})
        run.save(run.last, _checkpoint(weights, optimizer, scheduler, ema, progress_state))
        run.log_metrics(record)
        if tensorboard is not None:
            for name, number in record.items():
                if isinstance(number, int | float) and name != "epoch":
                    tensorboard.add_scalar(name, number, epoch)
        log.info("epoch %d: %s", epoch, {k: v for k, v in record.items() if k != "epoch"})
        if stopping is not None and progress_state.stale >= stopping.patience:
            stopped = True
            log.info("early stopping: %s has not improved for %d epochs", key, progress_state.stale)
            break
    if tensorboard is not None:
        tensorboard.close()
    if distributed:
        # Every rank returns only once rank 0 has written the run folder, and DDP's hold on the
        # process group is released here rather than at interpreter exit (gloo aborts there).
        del wrapped
        dist.barrier()
    return TrainResult(run.path, epoch, progress_state.best_epoch, progress_state.best_metric, stopped)


def _diverged(epoch: int, step: int, stalled: int, run: RunDir) -> str:
    kept = f"{run.last} holds epoch {epoch - 1}" if epoch > 1 else "no epoch finished, so nothing was saved"
    return (
        f"training diverged: the loss or its gradients were not finite for {stalled} steps in a row "
        f"(epoch {epoch}, step {step}); {kept}. Lower train.lr, keep train.clip_grad_norm, or train in "
        "train.precision=fp32"
    )


@contextmanager
def _rng_untouched() -> Iterator[None]:
    """Restore torch's, NumPy's and Python's global random states on leaving the block."""
    numpy_state, python_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        yield
    np.random.set_state(numpy_state)
    random.setstate(python_state)


def _check_stopping(stopping: EarlyStopping | None, validate: Validate | None, names: Sequence[str] | None) -> None:
    """Early stopping must watch a figure validation produces."""
    if stopping is None:
        return
    if validate is None:
        raise ConfigError("early_stopping watches a validation figure, but this run has no validation; remove it")
    if names is None:
        return
    available = sorted({"loss", *names})
    if stopping.metric not in available:
        close = difflib.get_close_matches(stopping.metric, available, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"early_stopping.metric {stopping.metric!r} is not a validation figure of this task.{hint} "
            f"Available: {', '.join(available)}"
        )


def _mean_across_ranks(value: float, device: torch.device) -> float:
    if not (dist.is_available() and dist.is_initialized()):
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item() / dist.get_world_size())


def _tensorboard(run: RunDir):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ConfigError("tensorboard logging needs the tensorboard package: pip install tensorboard") from exc
    return SummaryWriter(log_dir=str(run.path / "tensorboard"))
