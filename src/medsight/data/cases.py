"""Read a segmentation case (its channels as one image, and its label map) and fingerprint a data set."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd

from medsight.core.errors import InputError, MedsightError
from medsight.core.parallel import default_workers, run_cases
from medsight.core.progress import Progress
from medsight.core.volume import Volume
from medsight.data.manifest import Manifest
from medsight.data.reading import read_case_image
from medsight.planning import CaseFacts, Fingerprint, case_facts, fingerprint

__all__ = [
    "CaseImages",
    "Pairing",
    "channel_columns",
    "fingerprint_manifest",
    "guess_modality",
    "pairings",
    "read_case",
    "stack_channels",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaseImages:
    """One case: its channels stacked as one image (channels first), and its label map if any."""

    case_id: str
    image: Volume
    label: Volume | None


def channel_columns(manifest: Manifest) -> list[str]:
    """The image columns in channel order (``info["channels"]`` when the adapter gave it)."""
    columns = manifest.image_columns
    named = [f"image_{c}" for c in manifest.info.get("channels", [])]
    if named and all(c in columns for c in named):
        return named
    if not columns:
        raise InputError("the manifest has no image column (image, or image_<channel> per channel)")
    return columns


@dataclass(frozen=True)
class Pairing:
    """Which image columns (channels, in order) a label column is drawn on."""

    images: tuple[str, ...]
    label: str


def pairings(manifest: Manifest) -> list[Pairing]:
    """The (image channels, label map) pairs of a manifest's rows: ``label`` on every
    ``image``/``image_<channel>`` column (BraTS: four contrasts), or ``label_<phase>`` on
    ``image_<phase>`` (ACDC and M&Ms: end-diastole and end-systole frames).

    Raises:
        InputError: the manifest has no label column a segmentation can learn from.
    """
    if "label" in manifest.table.columns:
        return [Pairing(tuple(channel_columns(manifest)), "label")]
    found = [
        Pairing((f"image_{c.removeprefix('label_')}",), c)
        for c in manifest.label_columns
        if f"image_{c.removeprefix('label_')}" in manifest.table.columns
    ]
    if not found:
        raise InputError(
            f"the manifest has no label map column (label, or label_<x> beside image_<x>); its columns are "
            f"{list(manifest.table.columns)}"
        )
    return found


def stack_channels(volumes: Sequence[Volume], names: Sequence[str], case: str) -> Volume:
    """One image of a case's channel images, in order (they must share a grid).

    Raises:
        InputError: a channel is on another grid than the first (``case`` and the file are named).
    """
    first = volumes[0]
    for name, volume in zip(names[1:], volumes[1:], strict=True):
        if volume.spatial_shape != first.spatial_shape or not volume.geometry.isclose(first.geometry):
            raise InputError(
                f"{case}: {name} ({volume.spatial_shape}) is not on the grid of {names[0]} "
                f"({first.spatial_shape}); co-register the channels first"
            )
    if len(volumes) == 1:
        return first
    return first.with_array(np.concatenate([v.array for v in volumes], axis=0))


def read_case(
    manifest: Manifest, row: pd.Series, pairing: Pairing | None = None, *, with_label: bool = True
) -> CaseImages:
    """The case's channels as one image, and its label map (``pairing``: which columns; by default
    the first of :func:`pairings`).

    Raises:
        InputError: a file cannot be read, or the channels and the label map are not on one grid
            (the message names the case and the file).
    """
    pairing = pairing or pairings(manifest)[0]
    case = str(row.get("case_id", "?"))
    volumes = [read_case_image(manifest, row, column) for column in pairing.images]
    for column, volume in zip(pairing.images, volumes, strict=True):
        if volume.channels != 1:
            raise InputError(f"case {case}: {row[column]} has {volume.channels} channels; give one file per channel")
    image = stack_channels(volumes, [str(row[c]) for c in pairing.images], f"case {case}")
    label = None
    cell = row.get(pairing.label)
    if with_label and isinstance(cell, str) and cell.strip():
        label = read_case_image(manifest, row, pairing.label)
        if label.spatial_shape != image.spatial_shape or not label.geometry.isclose(image.geometry, atol=1e-3):
            raise InputError(
                f"case {case}: the label map {cell} ({label.spatial_shape}) is not on the image's grid "
                f"({image.spatial_shape}); a label map must be drawn on its image"
            )
    return CaseImages(case, image, label)


def guess_modality(image: Volume) -> str:
    """The image's DICOM modality when it says, else ``CT`` for Hounsfield-like integers (air near
    -1000 and bone above +500), else ``MR``."""
    if image.metadata.modality:
        return image.metadata.modality.upper()
    low, high = image.intensity_range()
    return "CT" if image.array.dtype.kind in "iu" and low <= -500 and high >= 500 else "MR"


def fingerprint_manifest(
    manifest: Manifest, *, modality: str | None = None, progress: Progress | None = None, ignore: int | None = None
) -> Fingerprint:
    """The fingerprint of a manifest's labelled images (those planning learns from; both frames of
    a cardiac case count); the label code ``ignore`` counts as background.

    Raises:
        InputError: no case has a label map, or a case cannot be read (named).
    """
    table = manifest.table
    work = [
        (row, pairing)
        for pairing in pairings(manifest)
        for _, row in table.iterrows()
        if isinstance(row.get(pairing.label), str) and row[pairing.label].strip()
    ]
    if not work:
        raise InputError("no case of the manifest has a label map; planning learns from labelled cases")
    facts, seen = [], set()
    one = partial(_facts_of, manifest.with_table(table.iloc[:0]), ignore)  # each worker gets its case alone
    items = [(i, *case) for i, case in enumerate(work)]
    for guessed, found in run_cases(one, items, workers=default_workers(), progress=progress,
                                    stage="fingerprinting cases"):  # fmt: skip
        seen.add(guessed)
        facts.append(found)
    if modality is None:
        if len(seen) > 1:
            raise InputError(f"the cases look like different modalities ({sorted(seen)}); say which with --modality")
        modality = seen.pop()
        log.info("modality %s (from the images; --modality overrides it)", modality)
    return fingerprint(facts, modality=modality)


def _facts_of(manifest: Manifest, ignore: int | None, item: tuple[int, pd.Series, Pairing]) -> tuple[str, CaseFacts]:
    """Case ``(i, row, pairing)`` (paths resolved against ``manifest``'s root): the modality its image
    looks like, and its facts.

    Raises:
        InputError: the case cannot be read (named).
    """
    i, row, pairing = item
    try:
        case = read_case(manifest, row, pairing)
    except MedsightError as exc:
        raise InputError(f"cannot fingerprint case {row['case_id']}: {exc}") from exc
    return guess_modality(case.image), case_facts(case.image, case.label, seed=i, ignore=ignore)
