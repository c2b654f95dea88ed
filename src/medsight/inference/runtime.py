"""The torch-free runtime: a 2D classifier package predicted without importing PyTorch:
``package.json`` read as JSON, each image read and prepared as training prepared it
(:func:`~medsight.transforms.prepare2d.prepare_image`), the ONNX network run on onnxruntime, its
logits turned into the task's probabilities in NumPy (sigmoid, softmax, or CORN's grade
probabilities), temperature-scaled where the run kept temperatures. The rows equal
``Predictor.predict_files``'s on the onnx backend (tested).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from medsight.core.errors import ConfigError, InputError, MedsightError
from medsight.core.progress import Progress
from medsight.inference.calibration import apply_temperatures, load_temperatures
from medsight.io.inputs import expand_inputs, image_facts, read_image_input
from medsight.transforms.prepare2d import Preprocess2D, prepare_image

__all__ = [
    "RUNTIME_KINDS",
    "class_probabilities",
    "onnx_session",
    "onnxruntime_available",
    "predict_images",
    "runs_without_torch",
]

log = logging.getLogger(__name__)

RUNTIME_KINDS = ("binary", "multiclass", "multilabel", "ordinal")


def _spec(package: Path) -> dict[str, Any]:
    path = package / "package.json"
    if not path.is_file():
        raise InputError(f"{package} is not a model package (no package.json); give the --out of `medsight export`")
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is unreadable ({exc}); export the run again") from exc
    if not isinstance(spec, dict):
        raise InputError(f"{path} is not a package description; export the run again")
    return spec


def runs_without_torch(package: str | os.PathLike[str]) -> bool:
    """Whether the package can be predicted by this runtime: a 2D classifier (no view fusion) with an
    ONNX network, and onnxruntime installed."""
    folder = Path(package)
    try:
        spec = _spec(folder)
    except InputError:
        return False
    task = spec.get("task") or {}
    return (
        task.get("kind") in RUNTIME_KINDS
        and not task.get("fusion")
        and isinstance(spec.get("onnx"), str)
        and (folder / spec["onnx"]).is_file()
        and onnxruntime_available()
    )


def class_probabilities(kind: str, logits: np.ndarray) -> np.ndarray:
    """The task's probabilities from its network's logits: binary ``(N,)`` P(positive); multiclass a
    softmax and ordinal CORN's grade probabilities ``(N, K)``; multilabel a sigmoid per finding.

    Raises:
        ConfigError: a kind that is not a classification.
    """
    z = np.asarray(logits, np.float32)
    if kind == "binary":
        return _sigmoid(z.reshape(-1))
    if kind == "multilabel":
        return _sigmoid(z)
    if kind == "multiclass":
        shifted = np.exp(z - z.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    if kind == "ordinal":
        above = np.cumprod(_sigmoid(z), axis=1)  # P(grade > k)
        upper = np.concatenate([np.ones_like(above[:, :1]), above], axis=1)
        lower = np.concatenate([above, np.zeros_like(above[:, :1])], axis=1)
        return np.clip(upper - lower, 0.0, None)
    raise ConfigError(f"{kind!r} is not a classification; the torch-free runtime predicts {', '.join(RUNTIME_KINDS)}")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-z.astype(np.float64)))).astype(np.float32)


def onnxruntime_available() -> bool:
    """Whether onnxruntime can be imported here (without importing it)."""
    return importlib.util.find_spec("onnxruntime") is not None


def onnx_session(path: str | os.PathLike[str], threads: int | None = None) -> Any:
    """An onnxruntime CPU session of a medsight network (one input, one output), with ``threads``
    intra-op threads (default: every core) and one inter-op thread.

    Raises:
        ConfigError: onnxruntime is not installed.
        InputError: the file is missing, is not an ONNX network onnxruntime can load, or has other
            than one input and one output.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such ONNX file (export the run again with `medsight export`)")
    if not onnxruntime_available():
        raise ConfigError(f"{path} is run on onnxruntime, which is not installed: pip install 'medsight[export]'")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for every kind of bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path} is not an ONNX network onnxruntime can load: {first}") from exc
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise InputError(f"{path} has {len(inputs)} inputs and {len(outputs)} outputs; "
                         "medsight's networks have one of each")  # fmt: skip
    log.info("loaded %s on onnxruntime %s (%d threads)", path, ort.__version__, options.intra_op_num_threads)
    return session


def predict_images(
    package: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    *,
    batch_size: int = 32,
    slice_index: int | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """One row per image file (folders expanded as ``medsight predict`` expands them): ``input``,
    its DICOM facts where it has them, and the task's ``prob`` or ``prob_<class>`` columns.

    Raises:
        InputError: not a package, an input missing or unreadable (named), an ONNX network that does
            not load.
        ConfigError: the package is not a 2D classifier with an ONNX network, or onnxruntime is not
            installed.
    """
    folder = Path(package)
    spec = _spec(folder)
    task = spec.get("task") or {}
    kind = task.get("kind")
    if kind not in RUNTIME_KINDS or task.get("fusion"):
        raise ConfigError(f"the torch-free runtime predicts 2D classifiers without view fusion; {folder} is a "
                          f"{kind!r} model: predict it with PyTorch installed")  # fmt: skip
    if not isinstance(spec.get("onnx"), str) or not (folder / spec["onnx"]).is_file():
        raise ConfigError(f"{folder} has no ONNX network; export it with `medsight export RUN --format onnx`")
    try:
        preprocess = Preprocess2D(**(spec.get("preprocess") or {}))
    except ValidationError as exc:
        raise InputError(f"{folder / 'package.json'} has preprocessing this runtime does not read: {exc}") from exc
    session = onnx_session(folder / spec["onnx"], threads)
    name = session.get_inputs()[0].name
    classes = [str(c) for c in task.get("classes") or []]
    paths = expand_inputs(inputs)
    cases, probabilities = [], []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        arrays = []
        for path in chunk:
            try:
                volume = read_image_input(path)
                arrays.append(prepare_image(volume, preprocess, slice_index=slice_index).astype(np.float32) / 255.0)
            except MedsightError as exc:
                raise type(exc)(str(exc) if str(path) in str(exc) else f"{path}: {exc}") from exc
            cases.append({"input": str(path), **image_facts(volume)})
        (logits,) = session.run(None, {name: np.stack(arrays)})
        probabilities.append(class_probabilities(kind, logits))
        if progress is not None:
            progress("predicting", min(start + batch_size, len(paths)), len(paths))
    p = np.concatenate(probabilities)
    scores = pd.DataFrame({"prob": p}) if kind == "binary" else pd.DataFrame(
        {f"prob_{c}": p[:, k] for k, c in enumerate(classes)})  # fmt: skip
    temperatures = load_temperatures(folder)
    if temperatures:  # fitted by `medsight evaluate --temperature`: as the PyTorch-side predictor applies them
        scores = apply_temperatures(scores, temperatures)
    log.info("predicted %d image(s) with %s on onnxruntime, without PyTorch", len(paths), folder)
    return pd.concat([pd.DataFrame(cases), scores], axis=1)
