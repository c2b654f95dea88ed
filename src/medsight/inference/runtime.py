"""The torch-free runtime: a model package predicted without importing PyTorch.

``package.json`` is read as JSON and the ONNX network run on onnxruntime. A 2D classifier: each
image read and prepared as training prepared it (:func:`~medsight.transforms.prepare2d.prepare_image`),
its logits turned into the task's probabilities in NumPy (sigmoid, softmax, or CORN's grade
probabilities), temperature-scaled where the run kept temperatures; a 2D detector's cell maps made
boxes in each image's pixels (:class:`~medsight.tasks.boxes.Boxes`). A 3D segmenter: each volume
(or case folder of channels) cropped, resampled and normalised as its plan says, predicted by
Gaussian-weighted sliding windows (:func:`~medsight.inference.window.sliding_window`), turned into
label codes, postprocessed and resampled back onto its own grid (:class:`~medsight.tasks.labelmaps.LabelMaps`),
its label map written beside the others. A 3D detector: the same windows, its heat map's peaks made
candidates and the probable ones drawn as an overlay (:class:`~medsight.tasks.candidates.Candidates`).
The rows equal ``Predictor.predict_files``'s (tested).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from medsight.core.errors import ConfigError, InputError, MedsightError
from medsight.core.progress import Progress
from medsight.core.volume import Volume
from medsight.inference.calibration import apply_temperatures, load_temperatures
from medsight.io import write
from medsight.io.atomic import file_sha256, full_suffix
from medsight.io.inputs import expand_inputs, image_facts, read_image_input
from medsight.transforms.prepare2d import Preprocess2D, prepare_image

if TYPE_CHECKING:  # 3D pieces are imported where used: a 2D classifier's process starts without them
    from medsight.planning import Plan
    from medsight.tasks.boxes import Boxes
    from medsight.tasks.candidates import Candidates
    from medsight.tasks.labelmaps import LabelMaps

__all__ = [
    "IMAGE_KINDS",
    "RUNTIME_KINDS",
    "VOLUME_KINDS",
    "PackageFacts",
    "PackageOutputs",
    "RuntimeModel",
    "check_recorded",
    "class_probabilities",
    "input_groups",
    "onnx_session",
    "onnxruntime_available",
    "predict_images",
    "predict_package",
    "predict_volumes",
    "read_input",
    "runs_without_torch",
    "runtime_model",
    "torch_available",
    "write_map",
]

log = logging.getLogger(__name__)

RUNTIME_KINDS = ("binary", "multiclass", "multilabel", "ordinal")
IMAGE_KINDS = (*RUNTIME_KINDS, "detection2d")  # 2D models the runtime predicts
VOLUME_KINDS = ("segmentation", "detection")  # 3D models the runtime predicts


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


def runs_without_torch(package: str | os.PathLike[str], *, backend: str = "auto") -> bool:
    """Whether ``medsight predict`` runs the package here (:func:`predict_package`) with the given
    ``backend``: one with an ONNX network, onnxruntime installed, and either a 2D classifier or
    detector (no view fusion; backend auto or onnx: onnxruntime beats eager PyTorch for 2D CNNs) or
    a 3D segmenter or detector (backend onnx, or auto where PyTorch is not installed: with it, bf16
    sliding windows are faster)."""
    folder = Path(package)
    try:
        spec = _spec(folder)
    except InputError:
        return False
    task = spec.get("task") or {}
    if not (isinstance(spec.get("onnx"), str) and (folder / spec["onnx"]).is_file() and onnxruntime_available()):
        return False
    if task.get("kind") in IMAGE_KINDS and not task.get("fusion"):
        return backend in ("auto", "onnx")
    if task.get("kind") in VOLUME_KINDS:
        return backend == "onnx" or (backend == "auto" and not torch_available())
    return False


def torch_available() -> bool:
    """Whether PyTorch can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # a finder that refuses it
        return False


def check_recorded(folder: Path, name: str) -> None:
    """Refuse a file of an exported package that no longer matches the SHA-256 its ``export.json``
    recorded (damaged, or changed after export); files of a run, which records none, pass.

    Raises:
        InputError: the checksum differs (the file is named, with the fix).
    """
    try:
        recorded = json.loads((folder / "export.json").read_text()).get("files", {}).get(name)
    except (OSError, ValueError, AttributeError):
        return
    if not recorded or not (folder / name).is_file():
        return
    if file_sha256(folder / name) != recorded:
        raise InputError(f"{folder / name} does not match the checksum its package recorded at export (damaged or "
                         "changed since): export the run again, or copy the package anew")  # fmt: skip


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
    its DICOM facts where it has them, and the task's ``prob`` or ``prob_<class>`` columns (a 2D
    detector: each finding's most probable cell, and its boxes in the image's pixels as JSON,
    ``detections``).

    Raises:
        InputError: not a package, an input missing or unreadable (named), an ONNX network that does
            not load.
        ConfigError: the package is not a 2D classifier or detector with an ONNX network, or
            onnxruntime is not installed.
    """
    folder = Path(package)
    spec = _spec(folder)
    task = spec.get("task") or {}
    kind = task.get("kind")
    if kind not in IMAGE_KINDS or task.get("fusion"):
        raise ConfigError(f"the torch-free runtime predicts 2D classifiers and detectors without view fusion; "
                          f"{folder} is a {kind!r} model: predict it with PyTorch installed")  # fmt: skip
    if not isinstance(spec.get("onnx"), str) or not (folder / spec["onnx"]).is_file():
        raise ConfigError(f"{folder} has no ONNX network: export it with `medsight export RUN --format onnx`, or "
                          "predict its weights with PyTorch installed")  # fmt: skip
    try:
        preprocess = Preprocess2D(**(spec.get("preprocess") or {}))
    except ValidationError as exc:
        raise InputError(f"{folder / 'package.json'} has preprocessing this runtime does not read: {exc}") from exc
    boxes = _detector(folder, task) if kind == "detection2d" else None
    check_recorded(folder, spec["onnx"])
    session = onnx_session(folder / spec["onnx"], threads)
    name = session.get_inputs()[0].name
    classes = [str(c) for c in task.get("classes") or []]
    paths = expand_inputs(inputs)
    cases, probabilities, tables = [], [], []
    shapes: list[tuple[int, ...]] = []
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
            shapes.append(tuple(int(n) for n in volume.spatial_shape[-2:]))
        (logits,) = session.run(None, {name: np.stack(arrays)})
        if boxes is not None:
            tables.append(boxes.table(logits, shapes[-len(chunk) :], preprocess.size))
        else:
            probabilities.append(class_probabilities(kind, logits))
        if progress is not None:
            progress("predicting", min(start + batch_size, len(paths)), len(paths))
    if boxes is not None:
        scores = pd.concat(tables, ignore_index=True)
    else:
        p = np.concatenate(probabilities)
        scores = pd.DataFrame({"prob": p}) if kind == "binary" else pd.DataFrame(
            {f"prob_{c}": p[:, k] for k, c in enumerate(classes)})  # fmt: skip
    temperatures = load_temperatures(folder)
    if temperatures:  # fitted by `medsight evaluate --temperature`: as the PyTorch-side predictor applies them
        scores = apply_temperatures(scores, temperatures)
    log.info("predicted %d image(s) with %s on onnxruntime, without PyTorch", len(paths), folder)
    return pd.concat([pd.DataFrame(cases), scores], axis=1)


def read_input(name: Path, files: Sequence[Path]) -> Volume:
    """One input: a file, or the channel files of a case stacked in order (they must share a grid)."""
    from medsight.data.cases import stack_channels

    volumes = []
    for path in files:
        try:
            volumes.append(read_image_input(path))
        except MedsightError as exc:
            raise type(exc)(str(exc) if str(path) in str(exc) else f"{path}: {exc}") from exc
    return stack_channels(volumes, [p.name for p in files], str(name))


_MAP_SUFFIXES = {".nii": ".nii.gz", ".nii.gz": ".nii.gz", ".nrrd": ".nrrd", ".mha": ".mha", ".mhd": ".mha"}


def write_map(label: Volume, source: Path, volume: Volume, masks: str | os.PathLike[str] | None,
              kind: str = "seg") -> Path:  # fmt: skip
    """Write a label map (``kind`` seg; or prob, probability maps) beside the others in ``masks``:
    NIfTI, NRRD or MHA as the input was, NIfTI for DICOM, named after the input, on the input's
    exact grid."""
    if masks is None:
        raise InputError("this model writes label maps: give a folder for them (masks=, or --out of `predict`)")
    if label.spatial_shape != volume.spatial_shape or not label.geometry.isclose(volume.geometry):
        raise MedsightError(f"{source}: the label map is not on the input's grid (a bug; please report it)")
    suffix = "" if source.is_dir() else full_suffix(source)
    name = source.name.removesuffix(suffix) if suffix else source.name
    folder = Path(masks)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}_{kind}{_MAP_SUFFIXES.get(suffix.lower(), '.nii.gz')}"
    return write(label, target, overwrite=True)


def input_groups(
    inputs: Sequence[str | os.PathLike[str]],
    case_files: Callable[[Path], list[Path] | None],
    *,
    volumes: bool = False,
) -> dict[Path, list[Path]]:
    """Each input to predict on, with the files it is read from: a folder for which ``case_files``
    names files (a case folder holding a model's channels, ``*_t1.nii.gz``, ``*_flair.nii.gz``...)
    is one input of those files; other folders are expanded (:func:`expand_inputs`; ``volumes``: a
    DICOM series folder is one input)."""
    groups: dict[Path, list[Path]] = {}
    rest: list[str | os.PathLike[str]] = []
    for item in inputs:
        folder = Path(item)
        files = case_files(folder) if folder.is_dir() else None
        if files:
            groups[folder] = files
        else:
            rest.append(item)
    if rest:
        groups.update({p: [p] for p in expand_inputs(rest, volumes=volumes)})
    return groups


def _detector(folder: Path, task: dict[str, Any]) -> Boxes:
    from medsight.tasks.boxes import Boxes, Detection2DSpec

    try:
        return Boxes(Detection2DSpec.model_validate(task))
    except ValidationError as exc:
        raise InputError(f"{folder / 'package.json'} has a task this version does not read: "
                         f"{' '.join(str(exc).split())[:300]}") from exc  # fmt: skip


def _volume_model(folder: Path, spec: dict[str, Any]) -> tuple[LabelMaps | Candidates, Plan]:
    """A 3D package's outputs (a segmenter's :class:`LabelMaps`, a detector's :class:`Candidates`) and plan."""
    from medsight.planning import Plan
    from medsight.tasks.candidates import Candidates, DetectionSpec
    from medsight.tasks.labelmaps import LabelMaps, SegmentationSpec

    task = spec.get("task") or {}
    if task.get("kind") not in VOLUME_KINDS:
        raise ConfigError(f"{folder} is a {task.get('kind')!r} model; the torch-free runtime predicts 3D volumes with "
                          "segmentation and detection models: predict it with PyTorch installed")  # fmt: skip
    if not isinstance(spec.get("onnx"), str) or not (folder / spec["onnx"]).is_file():
        raise ConfigError(f"{folder} has no ONNX network: export it with `medsight export RUN --format onnx`, or "
                          "predict its weights with PyTorch installed")  # fmt: skip
    try:
        plan = Plan.model_validate(spec.get("preprocess") or {})
        if task.get("kind") == "detection":
            return Candidates(DetectionSpec.model_validate(task)), plan
        return LabelMaps(SegmentationSpec.model_validate(task)), plan
    except ValidationError as exc:
        raise InputError(f"{folder / 'package.json'} has a task or plan this version does not read: "
                         f"{' '.join(str(exc).split())[:300]}") from exc  # fmt: skip


def predict_volumes(
    package: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    *,
    masks: str | os.PathLike[str],
    probabilities: bool = False,
    threads: int | None = None,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """One row per 3D input of a segmentation or detection package (a volume file, a DICOM series
    folder, or a case folder holding one file per channel the model reads): ``input``, its DICOM
    facts where it has them, the label map written to ``masks`` on the input's own grid (``output``;
    a detector's: its probable candidates as balls), and the figures: a segmenter's volume in ml per
    structure (a cardiac model given a cine: its function), a detector's candidates (count, highest
    probability, ``candidate_list``). With ``probabilities`` (segmenters), each structure's
    probability map too (``<name>_prob``, uint8, 255 = 1; column ``probabilities``).

    Raises:
        InputError: not a package, an input missing or unreadable or of the wrong shape (named), an
            ONNX network that does not load or was changed since export.
        ConfigError: the package is not a 3D segmentation or detection model with an ONNX network,
            onnxruntime is not installed, or probability maps asked of a detector.
    """
    from medsight.inference.window import sliding_window
    from medsight.tasks.labelmaps import LabelMaps, channel_files

    folder = Path(package)
    spec = _spec(folder)
    maps, plan = _volume_model(folder, spec)
    if probabilities and not isinstance(maps, LabelMaps):
        raise ConfigError("a detection model makes no probability maps (a fractional DICOM SEG is written for "
                          "segmentation models)")  # fmt: skip
    check_recorded(folder, spec["onnx"])
    session = onnx_session(folder / spec["onnx"], threads)
    name = session.get_inputs()[0].name

    def network(patches: np.ndarray) -> np.ndarray:
        (out,) = session.run(None, {name: patches})
        return out

    def window(image: np.ndarray) -> np.ndarray:
        return sliding_window(network, image, plan.patch_size, batch_size=plan.batch_size,
                              overlap=maps.spec.overlap, mirror=maps.spec.mirror)  # fmt: skip

    groups = input_groups(inputs, lambda f: channel_files(f, plan), volumes=True)
    if not groups:
        raise InputError("no inputs to predict on")
    cases, rows = [], []
    for done, (path, files) in enumerate(groups.items(), start=1):
        volume = read_input(path, files)
        try:
            if isinstance(maps, LabelMaps):
                figures, labels, found = maps.segment(volume, plan, window, probabilities=probabilities)
            else:
                (figures, labels), found = maps.detect(volume, plan, window), None
        except MedsightError as exc:
            raise type(exc)(f"{path.name}: {exc}") from exc
        case = {"input": str(path), **image_facts(volume), "output": str(write_map(labels, path, volume, masks))}
        if probabilities:
            case["probabilities"] = "" if found is None else str(write_map(found, path, volume, masks, "prob"))
        cases.append(case)
        rows.append(figures)
        if progress is not None:
            progress("predicting", done, len(groups))
    log.info("predicted %d volume(s) with %s on onnxruntime, without PyTorch", len(groups), folder)
    return pd.concat([pd.DataFrame(cases), pd.DataFrame(rows)], axis=1)


def predict_package(
    package: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    *,
    masks: str | os.PathLike[str],
    slice_index: int | None = None,
    probabilities: bool = False,
    threads: int | None = None,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """The package's rows for the inputs, without PyTorch: :func:`predict_images` for a 2D
    classifier, :func:`predict_volumes` (label maps into ``masks``) for a 3D segmenter or detector.

    Raises:
        ConfigError: a model the runtime does not predict (see :func:`runs_without_torch`), or
            ``probabilities`` asked of a classifier.
    """
    folder = Path(package)
    if (_spec(folder).get("task") or {}).get("kind") in VOLUME_KINDS:
        return predict_volumes(folder, inputs, masks=masks, probabilities=probabilities, threads=threads,
                               progress=progress)  # fmt: skip
    if probabilities:
        raise ConfigError("a classifier makes no probability maps (a fractional DICOM SEG is written for "
                          "segmentation models)")  # fmt: skip
    return predict_images(folder, inputs, slice_index=slice_index, threads=threads, progress=progress)


@dataclass(frozen=True)
class PackageFacts:
    """The package's fields the DICOM results name the model by
    (:func:`~medsight.export.dicom_results.algorithm_of`)."""

    recipe: str
    weights: str
    onnx: str | None


class PackageOutputs:
    """What the DICOM writers ask of a package's task, answered without PyTorch: a segmenter's label
    classes and probability maps, a 3D detector's overlay class and findings, a 2D detector's boxes
    (nothing for a classifier)."""

    def __init__(self, parts: LabelMaps | Candidates | Boxes | None) -> None:
        self.parts = parts

    def label_classes(self) -> tuple[tuple[int, str], ...]:
        from medsight.tasks.boxes import Boxes

        return () if self.parts is None or isinstance(self.parts, Boxes) else self.parts.label_classes()

    def probability_structures(self) -> tuple[str, ...]:
        from medsight.tasks.labelmaps import LabelMaps

        return tuple(self.parts.structures) if isinstance(self.parts, LabelMaps) else ()

    def findings(self, row: Mapping[str, Any]) -> list[Any]:
        from medsight.tasks.labelmaps import LabelMaps

        return [] if self.parts is None or isinstance(self.parts, LabelMaps) else self.parts.findings(row)


@dataclass(frozen=True)
class RuntimeModel:
    """A package as this runtime predicts it, with what
    :func:`~medsight.export.dicom_results.write_dicom_results` reads of a predictor (its folder, the
    package's names, the task's classes)."""

    run_dir: Path
    package: PackageFacts
    task: PackageOutputs


def runtime_model(package: str | os.PathLike[str]) -> RuntimeModel:
    """The package's :class:`RuntimeModel` (its ``package.json`` read, nothing run).

    Raises:
        InputError: not a package, or its task or plan cannot be read.
        ConfigError: a 3D model without an ONNX network.
    """
    folder = Path(package)
    spec = _spec(folder)
    task = spec.get("task") or {}
    parts: LabelMaps | Candidates | Boxes | None = None
    if task.get("kind") in VOLUME_KINDS:
        parts = _volume_model(folder, spec)[0]
    elif task.get("kind") == "detection2d":
        parts = _detector(folder, task)
    onnx = spec.get("onnx") if isinstance(spec.get("onnx"), str) else None
    facts = PackageFacts(str(spec.get("recipe") or folder.name), str(spec.get("weights") or "best.pt"), onnx)
    return RuntimeModel(folder, facts, PackageOutputs(parts))
