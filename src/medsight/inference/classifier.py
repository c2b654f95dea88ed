"""A trained classifier, loaded from its run folder, that predicts on cached images or files."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medsight.core.errors import InputError
from medsight.data.cache import ImageCache
from medsight.data.dataset import ImageDataset
from medsight.io import detect_format, read
from medsight.models import build_model
from medsight.models.predict import run_model
from medsight.tasks import ClassificationTask
from medsight.transforms.image2d import Preprocess2D, prepare_image

__all__ = ["Classifier"]

log = logging.getLogger(__name__)


@dataclass
class Classifier:
    """Network, task and preprocessing of a training run: everything prediction needs."""

    model: nn.Module
    task: ClassificationTask
    preprocess: Preprocess2D
    recipe: dict[str, Any]
    run_dir: Path

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike[str], *, weights: str = "best") -> Classifier:
        """Load ``best.pt`` (or ``last.pt``) of a run; EMA weights are used when the run kept them."""
        run_dir = Path(run_dir)
        config_file = run_dir / "config.json"
        if not config_file.is_file():
            raise InputError(
                f"{run_dir} is not a medsight run folder (no config.json); give the --out of a training run"
            )
        config = json.loads(config_file.read_text())
        recipe = config.get("recipe")
        if not recipe:
            raise InputError(f"{config_file} records no recipe; was the run made by `medsight train`?")
        checkpoint = run_dir / f"{weights}.pt"
        if not checkpoint.is_file():
            raise InputError(f"{checkpoint} does not exist (training did not finish an epoch?)")
        task = ClassificationTask(recipe["task"]["kind"], tuple(recipe["task"]["classes"]))
        preprocess = Preprocess2D(**recipe["preprocess"])
        model = build_model(
            recipe["model"]["name"],
            spatial_dims=2,
            in_channels=preprocess.channels,
            num_outputs=task.num_outputs,
            pooling=recipe["model"].get("pooling", "avg"),
        )
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        model.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
        return cls(model.eval(), task, preprocess, recipe, run_dir)

    def predict_cached(
        self, cache: ImageCache, indices: Sequence[int] | np.ndarray, batch_size: int = 64
    ) -> np.ndarray:
        """Probabilities for cached images (binary ``(N,)``, otherwise ``(N, K)``)."""
        if cache.spec != self.preprocess:
            raise InputError("the image cache was made with other preprocessing than this model expects")
        data = ImageDataset(cache, np.zeros(len(cache), np.float32), np.asarray(indices))
        return self.task.probabilities(run_model(self.model, data, batch_size=batch_size)).numpy()

    def predict_files(self, paths: Sequence[str | os.PathLike[str]]) -> np.ndarray:
        """Probabilities for image files or DICOM folders, preprocessed as in training."""
        arrays = []
        for path in paths:
            dicom = detect_format(path) in ("dicom", "dicom-series")
            volume = read(path, invert_monochrome1=True) if dicom else read(path)
            arrays.append(prepare_image(volume, self.preprocess).astype(np.float32) / 255.0)
        if not arrays:
            return np.empty((0,))
        with torch.no_grad():
            logits = self.model(torch.from_numpy(np.stack(arrays)))
        return self.task.probabilities(logits).numpy()
