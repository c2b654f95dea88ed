"""Preprocess each labelled image of a segmentation data set once, as its plan says, into a cache.

A cache folder holds per item (one image with its label map: a BraTS case, or one cardiac
frame) ``image_<n>.npy`` (``C x Z x Y x X`` float32, normalised, at the plan's spacing),
``label_<n>.npy`` (class indices, uint8), ``locations_<n>.npy`` (a sample of its foreground
voxels, class after class, to centre training patches on), and ``index.json``: the plan's
preprocessing key, each item's case, spacing, crop box and how many of its sampled voxels
belong to each class. A cache whose key matches (plan, classes, and every file's path, size
and time) is reused; anything else rebuilds it, atomically.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medsight.core.errors import InputError, MedsightError
from medsight.core.parallel import default_workers, run_cases
from medsight.core.progress import Progress
from medsight.data.cache import built, cache_key, reuse
from medsight.data.cases import Pairing, pairings, read_case
from medsight.data.manifest import Manifest
from medsight.io.atomic import atomic_dir
from medsight.planning import Plan
from medsight.transforms.volume3d import IGNORE_INDEX, Preprocessed, preprocess_case

__all__ = [
    "IGNORE_INDEX",
    "CachedItem",
    "VolumeCache",
    "build_volume_cache",
    "plan_normalization",
    "preprocess_for_plan",
]

log = logging.getLogger(__name__)

_VERSION = 2  # 2: foreground samples in locations_<n>.npy (in index.json they took seconds to parse)
_LOCATIONS_PER_CLASS = 2000  # foreground voxels kept per class and item, to centre patches on


@dataclass(frozen=True)
class CachedItem:
    """One preprocessed image with its label map."""

    row: int  # the manifest row (case) it belongs to
    case_id: str
    label_column: str
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    source_shape: tuple[int, int, int]
    box: tuple[tuple[int, int], ...]
    locations: dict[int, np.ndarray]  # class index -> (n, 3) voxel coordinates (memory-mapped)


@dataclass(frozen=True)
class VolumeCache:
    """The preprocessed items of a manifest, every file memory-mapped when the cache is opened: a
    run keeps reading the cache it opened even when another run (other labels, other files)
    rebuilds the folder meanwhile (the replaced files live on while mapped)."""

    folder: Path
    items: tuple[CachedItem, ...]
    _maps: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.items)

    def image(self, item: int) -> np.ndarray:
        """``(C, Z, Y, X)`` float32, memory-mapped."""
        return self._mapped(f"image_{item}.npy")

    def label(self, item: int) -> np.ndarray:
        """``(Z, Y, X)`` class indices, memory-mapped."""
        return self._mapped(f"label_{item}.npy")

    def map_all(self) -> VolumeCache:
        """Map every item's image and label now (see the class); returns the cache."""
        for item in range(len(self.items)):
            self.image(item)
            self.label(item)
        return self

    def _mapped(self, name: str) -> np.ndarray:
        # opened once: every training patch reads from these maps
        if name not in self._maps:
            self._maps[name] = np.load(self.folder / name, mmap_mode="r")
        return self._maps[name]

    def items_of(self, rows: Sequence[int] | np.ndarray) -> list[int]:
        """The items belonging to manifest ``rows`` (a case may have several: ED and ES)."""
        wanted = {int(r) for r in rows}
        return [i for i, item in enumerate(self.items) if item.row in wanted]


def plan_normalization(plan: Plan) -> dict[str, list]:
    """The plan's normalisation as the lists :func:`~medsight.transforms.volume3d.preprocess_case` takes."""
    norms = plan.normalization
    return {"schemes": [n.scheme for n in norms], "clips": [n.clip for n in norms], "means": [n.mean for n in norms],
            "stds": [n.std for n in norms], "masks": [n.mask for n in norms]}  # fmt: skip


def preprocess_for_plan(
    image: np.ndarray, spacing: Sequence[float], plan: Plan, label: np.ndarray | None = None
) -> Preprocessed:
    """One case cropped, resampled and normalised as ``plan`` says (:class:`Preprocessed`)."""
    crop = "lungs" if plan.crop_lungs else plan.crop_to_nonzero
    return preprocess_case(image, spacing, plan.spacing, label=label, crop=crop,
                           normalization=plan_normalization(plan), keep_regions=plan.keep_findings)  # fmt: skip


def _indices(label: np.ndarray, codes: Sequence[int], case: str, ignore: int | None = None) -> np.ndarray:
    """Label codes -> class indices 0..K (background 0; the ``ignore`` code -> :data:`IGNORE_INDEX`),
    refusing codes outside the schema."""
    lookup = {0: 0, **{int(c): k + 1 for k, c in enumerate(codes)}}
    if ignore is not None:
        lookup[int(ignore)] = IGNORE_INDEX
    values = np.unique(label)
    unknown = [v for v in values.tolist() if int(v) not in lookup or v != int(v)]
    if unknown:
        allowed = list(codes) if ignore is None else [*codes, f"{ignore} (ignored)"]
        raise InputError(
            f"the label map holds {unknown[:5]}, not among the task's label codes {allowed} "
            "(or 0 for background); fix the labels or the recipe's task.labels"
        )
    out = np.zeros(label.shape, np.uint8)
    for code, index in lookup.items():
        if index:
            out[label == code] = index
    return out


def _locations(folder: Path, n: int, counts: dict[str, int]) -> dict[int, np.ndarray]:
    """Item ``n``'s sampled foreground voxels per class: slices of its memory-mapped samples."""
    samples = np.load(folder / f"locations_{n}.npy", mmap_mode="r")
    ends = np.cumsum([0, *counts.values()])
    return {int(k): samples[ends[i] : ends[i + 1]] for i, k in enumerate(counts)}


def _open(folder: Path) -> VolumeCache:
    index = json.loads((folder / "index.json").read_text())
    items = tuple(
        CachedItem(
            row=entry["row"],
            case_id=entry["case_id"],
            label_column=entry["label_column"],
            spacing=tuple(entry["spacing"]),
            shape=tuple(entry["shape"]),
            source_shape=tuple(entry["source_shape"]),
            box=tuple(tuple(b) for b in entry["box"]),
            locations=_locations(folder, n, entry["locations"]),
        )
        for n, entry in enumerate(index["items"])
    )
    return VolumeCache(folder, items).map_all()  # type: ignore[arg-type]


def build_volume_cache(
    manifest: Manifest,
    plan: Plan,
    codes: Sequence[int],
    folder: str | os.PathLike[str],
    *,
    progress: Progress | None = None,
    ignore: int | None = None,
) -> VolumeCache:
    """Preprocess every labelled image of ``manifest`` into ``folder`` (or reuse a matching cache).
    Label ``codes`` become class indices 1..K; the ``ignore`` code (voxels no loss or metric
    counts) becomes :data:`IGNORE_INDEX` and is never a patch centre.

    Raises:
        InputError: a case cannot be read, or its labels are outside ``codes`` (the case is named).
    """
    folder = Path(folder)
    pairs = pairings(manifest)
    columns = sorted({c for p in pairs for c in (*p.images, p.label)})
    spec = {"version": _VERSION, "plan": plan.preprocessing_key(), "codes": list(codes),
            **({"ignore": int(ignore)} if ignore is not None else {})}  # fmt: skip
    key = cache_key(manifest, columns, spec)
    if (reused := reuse(folder, key, _open)) is not None:
        return reused
    work = [
        (position, row, pairing)
        for position, (_, row) in enumerate(manifest.table.iterrows())
        for pairing in pairs
        if isinstance(row.get(pairing.label), str) and row[pairing.label].strip()
    ]
    if not work:
        raise InputError("no case of the manifest has a label map to learn from")
    folder.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    entries: list[dict[str, Any]] = []
    with atomic_dir(folder, overwrite=True) as tmp:
        # the images are read and preprocessed in worker processes; the foreground samples are drawn
        # here, in order, so the cache does not depend on how many workers made it
        one = partial(_preprocess_item, manifest.with_table(manifest.table.iloc[:0]), plan, tuple(codes), ignore, tmp)
        items = [(n, *case) for n, case in enumerate(work)]  # each worker gets its case alone, not the manifest
        made = run_cases(one, items, workers=default_workers(), progress=progress, stage="preprocessing volumes")
        for n, entry in enumerate(made):
            label = np.load(tmp / f"label_{n}.npy", mmap_mode="r")
            samples = []
            for index in range(1, len(codes) + 1):
                where = np.argwhere(label == index)
                if len(where) > _LOCATIONS_PER_CLASS:
                    where = where[rng.choice(len(where), _LOCATIONS_PER_CLASS, replace=False)]
                samples.append(where.astype(np.int32))
            np.save(tmp / f"locations_{n}.npy", np.concatenate(samples).reshape(-1, 3))
            entry["locations"] = {str(index): len(where) for index, where in enumerate(samples, start=1)}
            entries.append(entry)
        index = {"key": key, "version": _VERSION, "plan": plan.preprocessing_key(), "items": entries}
        (tmp / "index.json").write_text(json.dumps(index))
    log.info("preprocessed %d images into %s", len(work), folder)
    return built(folder, key, _open)


def _preprocess_item(
    manifest: Manifest,
    plan: Plan,
    codes: Sequence[int],
    ignore: int | None,
    folder: Path,
    item: tuple[int, int, pd.Series, Pairing],
) -> dict[str, Any]:
    """Item ``(n, manifest position, row, image-label pairing)`` read (paths resolved against
    ``manifest``'s root), preprocessed and saved into ``folder`` as ``image_<n>.npy`` and
    ``label_<n>.npy``; its index entry (without the foreground samples).

    Raises:
        InputError: the case cannot be read or preprocessed (named, with the command that finds
            every such case).
    """
    n, position, row, pairing = item
    case = str(row["case_id"])
    try:
        images = read_case(manifest, row, pairing)
        label = _indices(np.asarray(images.label.array[0]), codes, case, ignore)  # type: ignore[union-attr]
        done: Preprocessed = preprocess_for_plan(np.asarray(images.image.array), images.image.geometry.spacing, plan,
                                                 label)  # fmt: skip
    except MedsightError as exc:
        raise InputError(
            f"case {case}: cannot preprocess {row[pairing.label]}: {exc}. "
            "Run `medsight data qc` on the manifest to find every such problem"
        ) from exc
    np.save(folder / f"image_{n}.npy", done.image)
    np.save(folder / f"label_{n}.npy", done.label)
    return {"row": position, "case_id": case, "label_column": pairing.label, "spacing": list(done.spacing),
            "shape": list(done.image.shape[1:]), "source_shape": list(done.source_shape),
            "box": [list(b) for b in done.box]}  # fmt: skip
