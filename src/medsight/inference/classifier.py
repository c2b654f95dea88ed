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
import pandas as pd
import torch
from torch import nn

from medsight.core.errors import ConfigError, InputError, MedsightError, UnsupportedFormatError
from medsight.core.progress import Progress
from medsight.core.volume import Volume
from medsight.data.cache import ImageCache
from medsight.data.dataset import ImageDataset
from medsight.io import detect_format, read
from medsight.io.atomic import full_suffix
from medsight.io.formats import files_under
from medsight.models import build_model, load_checkpoint
from medsight.models.predict import run_model
from medsight.tasks import ClassificationTask, fuse_views
from medsight.transforms.image2d import Preprocess2D, prepare_image

__all__ = ["FUSION_FILE", "Classifier", "expand_inputs", "image_facts"]

log = logging.getLogger(__name__)

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".ima", ".nii", ".nii.gz", ".nrrd", ".mha", ".mhd"}
FUSION_FILE = "fusion.json"  # how `medsight evaluate` fused views (method, fitted temperature)


def expand_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files as given; folders replaced by every image file under them (hidden files, DICOMDIR and
    files in no image format left out with one warning), sorted: a 2D classifier gives one
    prediction per image file, e.g. each view of an exam.

    Raises:
        InputError: an input does not exist, or no image was found.
    """
    paths: list[Path] = []
    skipped: list[Path] = []
    for item in map(Path, inputs):
        if not item.exists():
            raise InputError(f"{item} does not exist")
        if not item.is_dir():
            paths.append(item)  # named by the user: read (and refused) as it is
            continue
        for path in files_under(item):
            if path.name.upper() == "DICOMDIR":
                continue
            try:
                detect_format(path)
            except UnsupportedFormatError:
                if full_suffix(path) in _IMAGE_SUFFIXES:
                    raise  # named like an image but is none: corrupt, which the user must hear about
                skipped.append(path)  # notes, tables, reports beside the images
                continue
            paths.append(path)
    if skipped:
        names = ", ".join(p.name for p in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        log.warning("skipped %d file(s) that are not images (%s)", len(skipped), names)
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
        state = load_checkpoint(checkpoint)  # weights-only: a model file never runs code
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

    def _prepared(self, volume: Volume, slice_index: int | None) -> np.ndarray:
        return prepare_image(volume, self.preprocess, slice_index=slice_index).astype(np.float32) / 255.0

    def _probabilities(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            logits = self.model(torch.from_numpy(np.stack(arrays)))
        return self.task.probabilities(logits).numpy()

    def predict_volumes(self, volumes: Sequence[Volume], *, slice_index: int | None = None) -> np.ndarray:
        """Probabilities for images already read, preprocessed as in training (``slice_index``:
        which slice of a 3D volume)."""
        if not volumes:
            return np.empty((0,))
        return self._probabilities([self._prepared(v, slice_index) for v in volumes])

    def predict_table(
        self,
        inputs: Sequence[str | os.PathLike[str]],
        *,
        batch_size: int = 32,
        slice_index: int | None = None,
        progress: Progress | None = None,
    ) -> pd.DataFrame:
        """One row per image file (folders expanded): ``input``, DICOM facts (patient, study,
        laterality, view) when present, and ``prob_<class>`` (``prob`` for a binary task).
        Each file is read once; a file that cannot be read or prepared is named in the error."""
        paths = expand_inputs(inputs)
        rows = []
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            volumes, arrays = [], []
            for path in chunk:
                try:
                    volumes.append(_read(path))
                    arrays.append(self._prepared(volumes[-1], slice_index))
                except MedsightError as exc:
                    message = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
                    raise type(exc)(message) from exc
            for path, volume, p in zip(chunk, volumes, self._probabilities(arrays), strict=True):
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
