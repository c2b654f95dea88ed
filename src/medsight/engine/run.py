"""The run directory: resolved config, environment, per-epoch metrics and checkpoints."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from medsight.core.errors import InputError
from medsight.io.atomic import atomic_file

__all__ = ["RunDir"]

log = logging.getLogger(__name__)

_PACKAGES = ("medsight", "torch", "monai", "numpy", "pydicom", "SimpleITK", "scikit-learn", "pandas")


def _git_commit() -> str | None:
    source = Path(__file__).resolve().parents[3]
    if not (source / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


class RunDir:
    """Files of one training run (only the main process writes).

    ``config.json`` (resolved options), ``environment.json`` (versions, git commit, seed,
    command), ``metrics.jsonl`` (one line per epoch), ``last.pt`` and ``best.pt``.
    """

    def __init__(self, path: str | os.PathLike[str], *, writer: bool = True) -> None:
        self.path = Path(path)
        self.writer = writer

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "best.pt"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    def start(self, config: dict[str, Any], *, seed: int, resume: bool, extra: dict[str, Any] | None = None) -> None:
        """Create the folder and record how the run was made; refuse to mix two runs."""
        if not self.writer:  # other ranks: rank 0 checks and writes (checking here would race it)
            return
        if resume:
            if not self.last.is_file():
                raise InputError(f"cannot resume: {self.last} does not exist; start a new run without --resume")
            return
        if self.path.exists() and any(self.path.iterdir()):
            raise InputError(f"run folder {self.path} is not empty; pass --resume to continue it or choose a new --out")
        self.path.mkdir(parents=True, exist_ok=True)
        self.write_json("config.json", {**config, **(extra or {})})
        self.write_json(
            "environment.json",
            {"versions": _versions(), "git_commit": _git_commit(), "seed": seed, "command": sys.argv},
        )

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        if not self.writer:
            return
        with atomic_file(self.path / name) as tmp:
            tmp.write_text(json.dumps(data, indent=2, default=str))

    def log_metrics(self, record: dict[str, Any]) -> None:
        if not self.writer:
            return
        with open(self.metrics_file, "a") as fh:
            fh.write(json.dumps(record, default=float) + "\n")

    def metrics(self) -> list[dict[str, Any]]:
        """All epoch records so far."""
        if not self.metrics_file.is_file():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]

    def save(self, path: Path, state: dict[str, Any]) -> None:
        if not self.writer:
            return
        with atomic_file(path) as tmp:
            torch.save(state, tmp)

    def load(self, path: Path) -> dict[str, Any]:
        if not path.is_file():
            raise InputError(f"{path}: no such checkpoint")
        return torch.load(path, map_location="cpu", weights_only=False)

    def truncate_metrics(self, epochs: int) -> None:
        """Drop records after ``epochs`` (a resumed run recomputes them)."""
        if not self.writer or not self.metrics_file.is_file():
            return
        kept = [r for r in self.metrics() if r.get("epoch", 0) <= epochs]
        with atomic_file(self.metrics_file) as tmp:
            tmp.write_text("".join(json.dumps(r, default=float) + "\n" for r in kept))
