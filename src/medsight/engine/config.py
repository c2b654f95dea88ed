"""Training options: one pydantic model, loaded from YAML or set with ``--set key=value``."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medsight.core.errors import ConfigError

__all__ = ["EarlyStopping", "TrainConfig", "choose_device", "choose_precision"]


class EarlyStopping(BaseModel):
    """Stop when ``metric`` on validation has not improved for ``patience`` epochs."""

    model_config = ConfigDict(extra="forbid")
    metric: str = "loss"
    mode: Literal["min", "max"] = "min"
    patience: int = Field(5, ge=1)


class TrainConfig(BaseModel):
    """Everything the training loop needs besides the model, the task and the data."""

    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = Field(0.9, ge=0, lt=1)  # SGD only
    nesterov: bool = False  # SGD only
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_epochs: float = Field(0.5, ge=0)
    grad_accumulation: int = Field(1, ge=1)
    clip_grad_norm: float | None = Field(1.0, gt=0)
    ema_decay: float | None = Field(None, gt=0, lt=1)
    early_stopping: EarlyStopping | None = None
    # validate after every n-th epoch and the last one (early stopping's patience counts validations)
    validate_every: int = Field(1, ge=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: Literal["auto", "on", "off"] = "auto"
    deterministic: bool = False
    seed: int = 0
    num_workers: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tensorboard: bool = False

    @model_validator(mode="after")
    def _sgd_settings(self) -> TrainConfig:
        """Momentum and Nesterov are SGD's; given with AdamW they would be silently ignored."""
        given = {"momentum", "nesterov"} & self.model_fields_set
        if given and self.optimizer != "sgd":
            raise ValueError(f"train.{sorted(given)[0]} applies to optimizer sgd; this recipe uses {self.optimizer}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("train.nesterov needs train.momentum above 0")
        return self

    def validates(self, epoch: int) -> bool:
        """Whether ``epoch`` (from 1) is validated: every ``validate_every``-th epoch and the last."""
        return epoch % self.validate_every == 0 or epoch == self.epochs

    @property
    def validations(self) -> int:
        """How many of the ``epochs`` are validated (:meth:`validates`)."""
        return self.epochs // self.validate_every + (self.epochs % self.validate_every > 0)

    @field_validator("channels_last", mode="before")
    @classmethod
    def _yaml_switch(cls, value: object) -> object:
        """YAML reads ``on``/``off`` (as in ``--set train.channels_last=off``) as true/false."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


def choose_device(requested: str) -> torch.device:
    """``auto`` takes CUDA when present; asking for CUDA without one is an error with the fix."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but no CUDA GPU is available; use --device cpu or auto")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def choose_precision(requested: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = fp32) without timing anything.

    ``auto``: bf16 on GPUs that support it, else fp16 on GPUs; bf16 on CPUs that run it
    natively (AVX-512 BF16 or AMX), else fp32. Training measures instead
    (:func:`~medsight.engine.tuning.choose_mode`).

    Raises:
        ConfigError: fp16 on a CPU.
    """
    from medsight.engine.tuning import choose_mode

    return choose_mode(requested, "auto", device).amp_dtype
