"""A trained classifier, loaded from its run folder, that predicts on cached images or files."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from medsight.core.errors import ConfigError, InputError
from medsight.core.progress import Progress
from medsight.core.volume import Volume
from medsight.data.cache import ImageCache
from medsight.data.dataset import ImageDataset
from medsight.io import detect_format, read
from medsight.io.formats import files_under
from medsight.models import build_model
from medsight.models.predict import run_model
from medsight.tasks import ClassificationTask, fuse_views
from medsight.transforms.image2d import Preprocess2D, prepare_image

__all__ = ["FUSION_FILE", "Classifier", "expand_inputs", "image_facts"]

FUSION_FILE = "fusion.json"  # how `medsight evaluate` fused views (method, fitted temperature)


def expand_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files as given; folders replaced by every file under them (hidden files and DICOMDIR left out),
    sorted: a 2D classifier gives one prediction per image file, e.g. each view of an exam.

    Raises:
        InputError: an input does not exist, or nothing was found.
    """
    paths: list[Path] = []
    for item in map(Path, inputs):
        if not item.exists():
            raise InputError(f"{item} does not exist")
        if item.is_dir():
            paths += [p for p in files_under(item) if p.name.upper() != "DICOMDIR"]
        else:
            paths.append(item)
    if not paths:
        raise InputError(f"no image files in {', '.join(map(str, inputs))}")
    return paths


def image_facts(volume: Volume) -> dict[str, str]:
    """Patient, study, laterality and view of an image as its DICOM header gives them (what view
    fusion groups by); ``{}`` for files that carry none."""
    meta = volume.metadata
    facts = {
        "patient_id": meta.patient_id,
        "study_id": meta.study_uid,
        "laterality": meta.laterality,
        "view": meta.view,
    }
    return {k: v for k, v in facts.items() if v}


def _read(path: str | os.PathLike[str]) -> Volume:
    """An input image as training saw it (MONOCHROME1 shown as a viewer would)."""
    return read(path, invert_monochrome1=True) if detect_format(path) in ("dicom", "dicom-series") else read(path)


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

    def predict_volumes(self, volumes: Sequence[Volume]) -> np.ndarray:
        """Probabilities for images already read, preprocessed as in training."""
        if not volumes:
            return np.empty((0,))
        arrays = [prepare_image(v, self.preprocess).astype(np.float32) / 255.0 for v in volumes]
        with torch.no_grad():
            logits = self.model(torch.from_numpy(np.stack(arrays)))
        return self.task.probabilities(logits).numpy()

    def predict_files(self, paths: Sequence[str | os.PathLike[str]]) -> np.ndarray:
        """Probabilities for image files or DICOM folders, preprocessed as in training."""
        return self.predict_volumes([_read(p) for p in paths])

    def predict_table(
        self, inputs: Sequence[str | os.PathLike[str]], *, batch_size: int = 32, progress: Progress | None = None
    ) -> pd.DataFrame:
        """One row per image file (folders expanded): ``input``, DICOM facts (patient, study,
        laterality, view) when present, and ``prob_<class>`` (``prob`` for a binary task).
        Each file is read once."""
        paths = expand_inputs(inputs)
        rows = []
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            volumes = [_read(p) for p in chunk]
            for path, volume, p in zip(chunk, volumes, self.predict_volumes(volumes), strict=True):
                values = np.atleast_1d(p)
                names = ["prob"] if values.size == 1 else [f"prob_{c}" for c in self.task.classes]
                probs = dict(zip(names, map(float, values), strict=True))
                rows.append({"input": str(path), **image_facts(volume), **probs})
            if progress is not None:
                progress("predicting", min(start + batch_size, len(paths)), len(paths))
        return pd.DataFrame(rows)

    def fuse(self, table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame] | None:
        """Breast- and exam-level scores of :meth:`predict_table` rows, fused as the recipe says
        (attention with the temperature ``medsight evaluate`` fitted); None when the recipe fuses
        nothing.

        Raises:
            InputError: the images do not say their study and laterality (DICOM headers).
            ConfigError: attention fusion before ``medsight evaluate`` fitted its temperature.
        """
        method = self.recipe["task"].get("fusion")
        if not method:
            return None
        missing = [c for c in ("study_id", "laterality") if c not in table or table[c].isna().any()]
        if missing:
            raise InputError(
                f"cannot fuse views into breasts and exams: {missing} unknown for some images "
                "(DICOM StudyInstanceUID and ImageLaterality); per-image predictions are still written"
            )
        options: dict[str, Any] = {}
        if method == "attention":
            fitted = self.run_dir / FUSION_FILE
            if not fitted.is_file():
                raise ConfigError(
                    f"attention fusion uses the temperature `medsight evaluate {self.run_dir}` fits on the "
                    "validation split; run it first (per-image predictions are still written)"
                )
            options["temperature"] = float(json.loads(fitted.read_text())["temperature"])
        return fuse_views(table, "prob", method=method, **options)
