"""The run directory: resolved config, environment, per-epoch metrics and checkpoints."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from medsight.core.errors import ConfigError, InputError
from medsight.io.atomic import atomic_file
from medsight.models.transfer import load_checkpoint

__all__ = ["RunDir", "git_commit", "versions"]

log = logging.getLogger(__name__)

_PACKAGES = ("medsight", "torch", "monai", "numpy", "pydicom", "SimpleITK", "scikit-learn", "pandas")


def git_commit() -> str | None:
    """The medsight source tree's git commit, when it runs from a checkout."""
    source = Path(__file__).resolve().parents[3]
    if not (source / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def versions() -> dict[str, str | None]:
    """Python's and the key packages' versions."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


# what may differ when a run is resumed: more epochs, and how (not what) it is computed
_RESUMABLE = frozenset({"epochs", "device", "num_workers", "tensorboard", "validate_every"})


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


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
        """Create the folder and record how the run was made; refuse to mix two runs.

        With ``resume``, a run that has a checkpoint continues only if nothing that alters the
        data or the network changed (``epochs`` may grow; device, workers and TensorBoard may
        change); what changed is recorded under ``resumed`` in ``config.json``. A run stopped
        before its first checkpoint starts again from scratch in the same folder.
        """
        if not self.writer:  # other ranks: rank 0 checks and writes (checking here would race it)
            return
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"--out {self.path} is a file; a run needs a folder (give a new folder name)")
        record = {**config, **(extra or {})}
        if resume and self.last.is_file():
            self._record_resume(record)
            return
        if resume:
            if self.path.is_dir() and any(self.path.iterdir()) and not (self.path / "config.json").is_file():
                raise InputError(
                    f"cannot resume: {self.path} holds no medsight run (no config.json); choose the run's folder"
                )
            if self.path.exists():
                log.warning("%s has no checkpoint yet (stopped in its first epoch): starting it again", self.path)
                for name in ("metrics.jsonl", "best.pt", "tensorboard"):
                    stale = self.path / name
                    shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)
        elif self.path.exists() and any(self.path.iterdir()):
            raise InputError(f"run folder {self.path} is not empty; pass --resume to continue it or choose a new --out")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the run folder {self.path}: {exc.strerror or exc}") from exc
        self.write_json("config.json", record)
        self.write_json(
            "environment.json",
            {"versions": versions(), "git_commit": git_commit(), "seed": seed, "command": sys.argv},
        )

    def _record_resume(self, record: dict[str, Any]) -> None:
        """Refuse a resume that changes the data or the network; record what changed."""
        old = json.loads((self.path / "config.json").read_text()) if (self.path / "config.json").is_file() else {}
        before, after = _flatten({k: v for k, v in old.items() if k != "resumed"}), _flatten(record)
        changed = {k: (before.get(k), after.get(k)) for k in sorted(before.keys() | after.keys())}
        changed = {k: v for k, v in changed.items() if json.dumps(v[0], default=str) != json.dumps(v[1], default=str)}
        refused = [k for k in changed if k.rsplit(".", 1)[-1] not in _RESUMABLE]
        if refused:
            shown = "; ".join(f"{k}: {changed[k][0]!r} -> {changed[k][1]!r}" for k in refused[:6])
            raise ConfigError(
                f"cannot resume {self.path} with a different recipe ({shown}): it would train on other data "
                "or another network than the checkpoint and config.json describe. Resume with the same recipe "
                "(only --epochs may grow), or start a new run in another --out"
            )
        for key, (was, now) in changed.items():
            if key.rsplit(".", 1)[-1] == "epochs" and isinstance(was, int) and isinstance(now, int) and now < was:
                raise ConfigError(f"--epochs can only grow when resuming: the run was set to {was}, got {now}")
        if changed:
            log.info("resuming %s with %s", self.path, {k: list(v) for k, v in changed.items()})
            history = [*old.get("resumed", []), {"changed": {k: list(v) for k, v in changed.items()}}]
            self.write_json("config.json", {**record, "resumed": history})

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        if not self.writer:
            return
        with atomic_file(self.path / name) as tmp:
            tmp.write_text(json.dumps(data, indent=2, default=str))

    def note(self, key: str, value: Any) -> None:
        """Record a fact about how this run ran (not a recipe setting) in ``environment.json``."""
        if not self.writer:
            return
        path = self.path / "environment.json"
        try:
            facts = json.loads(path.read_text())
        except (OSError, ValueError):
            facts = {}
        self.write_json("environment.json", {**facts, key: value})

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
        """A checkpoint of this run (loaded weights-only: nothing in it can run code)."""
        return load_checkpoint(path)

    def truncate_metrics(self, epochs: int) -> None:
        """Drop records after ``epochs`` (a resumed run recomputes them)."""
        if not self.writer or not self.metrics_file.is_file():
            return
        kept = [r for r in self.metrics() if r.get("epoch", 0) <= epochs]
        with atomic_file(self.metrics_file) as tmp:
            tmp.write_text("".join(json.dumps(r, default=float) + "\n" for r in kept))
