"""A segmentation model's outputs made into label maps and measurements, in NumPy alone.

The recipe's ``task`` section (:class:`SegmentationSpec`), how network outputs become label codes
on the source grid (softmax over exclusive labels, or one sigmoid per region painted from the
largest to the smallest), the postprocessing the plan chose, per-structure volumes and cardiac
function of a cine. Both the PyTorch task (:class:`~medsight.tasks.segmentation.SegmentationTask`)
and the torch-free runtime (:mod:`medsight.inference.runtime`) predict through :class:`LabelMaps`;
only where the logits come from differs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import ndimage

from medsight.core.errors import ConfigError, InputError
from medsight.core.volume import Volume, VolumeMetadata
from medsight.data.volume_cache import preprocess_for_plan
from medsight.planning import Plan
from medsight.transforms.volume3d import restore

__all__ = [
    "CardiacSpec",
    "LabelMaps",
    "SegmentationSpec",
    "cine_function",
    "drop_small",
    "keep_largest",
    "paint_order",
    "ventricular_function",
]

log = logging.getLogger(__name__)

Window = Callable[[np.ndarray], np.ndarray]
"""Logits ``(K, z, y, x)`` of the network over a whole preprocessed volume ``(C, z, y, x)``."""


class CardiacSpec(BaseModel):
    """Cardiac function from end-diastole and end-systole label maps.

    Attributes:
        lv, rv, myo: The label names of the left and right ventricular cavities and the myocardium.
        ed, es: The manifest's label columns of the two phases (ACDC and M&Ms: ``label_ed``, ``label_es``).
        density: Myocardial density in g/ml (LV mass = myocardial volume at ED x density).
    """

    model_config = ConfigDict(extra="forbid")
    lv: str = "LV"
    rv: str = "RV"
    myo: str = "MYO"
    ed: str = "label_ed"
    es: str = "label_es"
    density: float = Field(1.05, gt=0)


class SegmentationSpec(BaseModel):
    """A segmentation recipe's ``task`` section.

    Attributes:
        labels: Class name -> its code in the label maps (background is 0).
        regions: Region name -> the label codes it unites; when given, the network learns one
            sigmoid per region (overlapping structures such as BraTS WT/TC/ET) and predictions are
            painted back to label codes from the largest region to the smallest.
        tolerance_mm: Normalised surface Dice tolerance.
        lesion_wise: Also report BraTS lesion-wise Dice and HD95 per structure.
        overlap: Sliding-window overlap at prediction.
        mirror: Test-time augmentation by mirroring along every axis (8 passes).
        cardiac: Also measure cardiac function (volumes, ejection fractions, LV mass) from each
            case's end-diastole and end-systole images, and score it against the reference.
        ignore: A label code marking voxels that are neither background nor a structure (unsure
            or unannotated regions, LUNA16's excluded findings): no loss, Dice or evaluation
            figure counts them, and no patch is centred on them (nnU-Net's ignore label).
    """

    model_config = ConfigDict(extra="forbid")
    kind: Literal["segmentation"]
    labels: dict[str, int]
    regions: dict[str, list[int]] | None = None
    tolerance_mm: float = Field(2.0, ge=0)
    lesion_wise: bool = False
    overlap: float = Field(0.5, ge=0, lt=1)
    mirror: bool = False
    cardiac: CardiacSpec | None = None
    ignore: int | None = None

    @model_validator(mode="after")
    def _codes(self) -> SegmentationSpec:
        codes = list(self.labels.values())
        if not codes:
            raise ValueError("labels must name at least one class (name: code)")
        if any(c <= 0 or c > 255 for c in codes) or len(set(codes)) != len(codes):
            raise ValueError(f"label codes must be distinct whole numbers 1..255 (0 is background), got {codes}")
        if self.ignore is not None and (self.ignore in codes or not 0 < self.ignore <= 255 or len(codes) > 250):
            raise ValueError(f"ignore must be a code 1..255 that is no class's (the classes are {codes}), "
                             f"got {self.ignore}")  # fmt: skip
        if self.regions is not None:
            for name, members in self.regions.items():
                unknown = sorted(set(members) - set(codes))
                if not members or unknown:
                    raise ValueError(f"region {name!r} must unite label codes among {codes}; unknown: {unknown}")
            paint_order(self.regions)  # every region must have a code of its own to paint
        if self.cardiac is not None:
            missing = [n for n in (self.cardiac.lv, self.cardiac.rv, self.cardiac.myo) if n not in self.labels]
            if missing or self.regions is not None:
                raise ValueError(f"cardiac function reads the labels {missing or ''} (as labels, not regions); "
                                 f"the labels are {list(self.labels)}")  # fmt: skip
        return self


def paint_order(regions: Mapping[str, Sequence[int]]) -> list[tuple[str, int]]:
    """Regions from the largest to the smallest, each with the label code it paints (the one code it
    holds that no smaller region holds)."""
    ordered = sorted(regions.items(), key=lambda item: -len(set(item[1])))
    painted = []
    for i, (name, members) in enumerate(ordered):
        later = {c for _, m in ordered[i + 1 :] for c in m}
        own = sorted(set(members) - later)
        if len(own) != 1:
            raise ValueError(
                f"region {name!r} {sorted(set(members))} must hold exactly one label code that no smaller region "
                f"holds (to paint predictions back to labels); it holds {own}"
            )
        painted.append((name, own[0]))
    return painted


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32, copy=False)  # no overflow for large |z|


def _softmax(z: np.ndarray) -> np.ndarray:
    shifted = np.exp(z - z.max(axis=0, keepdims=True))
    shifted /= shifted.sum(axis=0, keepdims=True)
    return shifted.astype(np.float32, copy=False)


class LabelMaps:
    """What a segmentation network's outputs mean (one spec's labels and regions), and how they
    become label maps and figures.

    Attributes:
        spec: The recipe's ``task`` section.
        codes: The label codes, in the spec's order.
        painting: Each region with the code it paints, largest first (``[]`` without regions).
        structures: What is learnt, scored and reported: the regions, else the labels.
        regions: Whether the network has one sigmoid per region (else a softmax over background and labels).
    """

    def __init__(self, spec: SegmentationSpec) -> None:
        self.spec = spec
        self.codes = tuple(spec.labels.values())
        self.painting = paint_order(spec.regions) if spec.regions else []
        self.structures = list(spec.regions) if spec.regions else list(spec.labels)
        self.regions = spec.regions is not None

    def label_classes(self) -> tuple[tuple[int, str], ...]:
        """The codes and names of the classes in the label maps (a DICOM SEG's segments)."""
        return tuple((code, name) for name, code in self.spec.labels.items())

    def on_source(self, logits: np.ndarray, case: Any) -> tuple[np.ndarray, np.ndarray]:
        """Label codes on the source grid before any postprocessing, from logits ``(K, z, y, x)`` on
        the preprocessed grid (``case``: the crop box and shapes of
        :class:`~medsight.transforms.volume3d.Preprocessed` or a cached item), and each structure's
        probability there (``(S, Z, Y, X)`` float32, in the order of :attr:`structures`)."""
        logits = np.asarray(logits, np.float32)
        if self.regions:
            back = restore(_sigmoid(logits), case)
            labels = np.zeros(back.shape[1:], np.uint8)
            for name, code in self.painting:
                labels[back[self.structures.index(name)] > 0.5] = code
            return labels, back
        background = np.zeros(len(logits), np.float32)
        background[0] = 1.0
        back = restore(_softmax(logits), case, background=background)
        return np.array([0, *self.codes], np.uint8)[back.argmax(axis=0)], back[1:]

    def evidence(self, logits: np.ndarray) -> np.ndarray:
        """Each structure's probability on the preprocessed grid ``(S, z, y, x)``."""
        logits = np.asarray(logits, np.float32)
        return _sigmoid(logits) if self.regions else _softmax(logits)[1:]

    def masks(self, labels: np.ndarray) -> dict[str, np.ndarray]:
        """Per structure, its mask in a label map of codes."""
        if self.regions:
            return {n: np.isin(labels, self.spec.regions[n]) for n in self.structures}  # type: ignore[index]
        return {n: labels == self.spec.labels[n] for n in self.structures}

    def postprocess(self, labels: np.ndarray, plan: Plan, spacing: Sequence[float] | None = None) -> np.ndarray:
        """Each structure the plan's ``keep_largest`` names (a label code, or a label or region name)
        keeps only its largest component (the rest becomes background); with the source
        ``spacing``, foreground regions smaller than the plan's ``min_component_ml`` are removed."""
        for item in plan.keep_largest:
            labels = keep_largest(labels, self._mask_of(labels, item))
        if spacing is not None and plan.min_component_ml > 0:
            labels = drop_small(labels, plan.min_component_ml / (float(np.prod(spacing)) / 1000.0))
        return labels

    def _mask_of(self, labels: np.ndarray, item: int | str) -> np.ndarray:
        if isinstance(item, str):
            if item not in self.structures:
                raise ConfigError(f"the plan's keep_largest names {item!r}, which is none of {self.structures}")
            return self.masks(labels)[item]
        return labels == item

    def segment(
        self, volume: Volume, plan: Plan, window: Window, *, probabilities: bool = False
    ) -> tuple[dict[str, float], Volume, Volume | None]:
        """One input segmented on its own grid (spacing, origin and direction kept): its figures (each
        structure's volume in ml; a cardiac model given a cine, one 3D frame per channel as ACDC's
        ``_4d.nii.gz``, segments every frame and adds the function, :func:`cine_function`), its label
        map (one channel per frame), and with ``probabilities`` each structure's probability map
        (uint8, 255 = 1, before postprocessing; None for a cine). ``window`` gives the network's
        logits over a preprocessed volume (sliding windows).

        Raises:
            InputError: a single slice, or other channels than the model reads (with the fix).
        """
        if volume.is_2d:
            raise InputError("the model segments 3D volumes; this input is a single slice")
        cine = self.spec.cardiac is not None and plan.in_channels == 1 and volume.channels > 1
        if volume.channels != plan.in_channels and not cine:
            names = ", *_".join(plan.channel_names)
            folder = (f"; give the case's folder, holding one file per channel named *_{names}"
                      if plan.in_channels > 1 and plan.channel_names else "")  # fmt: skip
            raise InputError(
                f"the model reads {plan.in_channels} channel(s) per case; this input has {volume.channels}{folder}"
            )
        frames = [volume.array[t : t + 1] for t in range(volume.channels)] if cine else [volume.array]
        spacing = volume.geometry.spacing
        voxel_ml = float(np.prod(spacing)) / 1000.0
        labels, curves = [], {n: [] for n in self.structures}
        kept = None
        for frame in frames:
            case = preprocess_for_plan(np.asarray(frame), spacing, plan)
            painted, probs = self.on_source(window(case.image), case)
            labels.append(self.postprocess(painted, plan, spacing))
            if probabilities and not cine:
                kept = np.rint(np.clip(probs, 0.0, 1.0) * 255).astype(np.uint8)
            for name, mask in self.masks(labels[-1]).items():
                curves[name].append(float(mask.sum()) * voxel_ml)
        if cine:
            row = cine_function(curves, self.spec.cardiac)  # type: ignore[arg-type]
        else:
            row = {f"volume_ml_{n}": curve[0] for n, curve in curves.items()}
        metadata = VolumeMetadata(source_format=None, modality="SEG", patient_id=volume.metadata.patient_id,
                                  study_uid=volume.metadata.study_uid)  # fmt: skip
        found = None if kept is None else Volume(kept, volume.geometry, metadata)
        return row, Volume(np.stack(labels), volume.geometry, metadata), found


def channel_files(folder: Path, plan: Plan) -> list[Path] | None:
    """For a model of several channels: the folder's file for each channel, found by its name
    (``BraTS2021_00001_t1ce.nii.gz`` for ``t1ce``: the name after the last ``_`` or ``-``); None
    for a model of one channel, or a folder holding none of them.

    Raises:
        InputError: the folder holds some of the channels but not all, or one twice.
    """
    if plan.in_channels < 2 or not plan.channel_names:
        return None
    found: dict[str, list[Path]] = {name: [] for name in plan.channel_names}
    for path in sorted(folder.iterdir()):
        stem = path.name.split(".")[0].lower()
        key = stem.replace("-", "_").rsplit("_", 1)[-1]
        if path.is_file() and key in found:
            found[key].append(path)
    if not any(found.values()):
        return None
    missing = [n for n, files in found.items() if not files]
    doubled = [n for n, files in found.items() if len(files) > 1]
    if missing or doubled:
        raise InputError(
            f"{folder}: the model reads the channels {plan.channel_names}; "
            + (f"no file for {missing}" if missing else f"several files for {doubled}")
            + " (a case folder holds one <case>_<channel> image per channel)"
        )
    return [found[name][0] for name in plan.channel_names]


def cine_function(curves: Mapping[str, Sequence[float]], spec: CardiacSpec) -> dict[str, float]:
    """Function from per-frame volumes (ml) of a cine: ED is the frame of largest LV volume, ES of the
    smallest; LV and RV EDV, ESV, SV and EF there, and LV mass (myocardium at ED x density)."""
    lv = np.asarray(curves[spec.lv], dtype=float)
    if lv.size < 2:
        raise InputError("a cine needs at least two frames to find end-diastole and end-systole")
    ed, es = int(np.argmax(lv)), int(np.argmin(lv))
    at = {frame: {n: float(curves[n][frame]) for n in (spec.lv, spec.rv, spec.myo)} for frame in (ed, es)}
    return {"frames": float(lv.size), "ed_frame": float(ed), "es_frame": float(es),
            **ventricular_function(at[ed], at[es], spec)}  # fmt: skip


def ventricular_function(ed: Mapping[str, float], es: Mapping[str, float], spec: CardiacSpec) -> dict[str, float]:
    """LV and RV EDV, ESV, SV (ml) and EF (%), and LV mass (g), from structure volumes (ml) at ED and ES."""
    row: dict[str, float] = {}
    for side, name in (("lv", spec.lv), ("rv", spec.rv)):
        edv, esv = ed[name], es[name]
        row[f"{side}_edv_ml"], row[f"{side}_esv_ml"], row[f"{side}_sv_ml"] = edv, esv, edv - esv
        row[f"{side}_ef"] = 100.0 * (edv - esv) / edv if edv > 0 else float("nan")
    row["lv_mass_g"] = ed[spec.myo] * spec.density
    return row


def drop_small(labels: np.ndarray, voxels: float) -> np.ndarray:
    """Remove foreground regions (all labels together, 26-connected) of fewer than ``voxels`` voxels."""
    parts, count = ndimage.label(labels > 0, structure=ndimage.generate_binary_structure(3, 3))
    if count == 0:
        return labels
    sizes = np.bincount(parts.reshape(-1))
    small = sizes < voxels
    small[0] = False
    out = labels.copy()
    out[small[parts]] = 0
    return out


def keep_largest(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``labels`` with the voxels of ``mask`` outside its largest 26-connected component set to background."""
    parts, count = ndimage.label(mask, structure=ndimage.generate_binary_structure(3, 3))
    if count <= 1:
        return labels
    sizes = np.bincount(parts.reshape(-1))[1:]
    out = labels.copy()
    out[mask & (parts != int(np.argmax(sizes)) + 1)] = 0
    return out
