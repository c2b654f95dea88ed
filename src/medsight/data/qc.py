"""Quality control of a manifest: what would silently spoil training or evaluation.

Errors (exit status non-zero in the CLI): unreadable files, masks whose geometry differs
from their image, label values outside the schema, exact duplicates across splits,
patients in several splits. Warnings: empty masks, rare spacing/size outliers, duplicates within
a split, near-duplicates (perceptual hash) across splits, and the data set's own caveats.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import imagehash
import numpy as np
import pandas as pd
from PIL import Image

from medsight.core.errors import MedsightError
from medsight.core.labels import LabelSchema
from medsight.core.progress import Progress
from medsight.core.volume import Volume
from medsight.data.manifest import Manifest
from medsight.data.reading import read_case_image
from medsight.io.atomic import atomic_file

__all__ = ["Finding", "QcReport", "run_qc", "target_problems"]

log = logging.getLogger(__name__)

Severity = Literal["error", "warning", "info"]
_MAX_PAIRWISE = 20000  # near-duplicate search compares all pairs up to this many images


@dataclass(frozen=True)
class Finding:
    """One problem found: how bad, which check, which case, and what to do."""

    severity: Severity
    check: str
    message: str
    case_id: str | None = None


@dataclass
class QcReport:
    """Findings plus the class balance per split and subgroup."""

    findings: list[Finding] = field(default_factory=list)
    balance: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def add(self, severity: Severity, check: str, message: str, case_id: str | None = None) -> None:
        self.findings.append(Finding(severity, check, message, case_id))

    def counts(self) -> dict[str, dict[str, int]]:
        """Number of findings per check and severity."""
        out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for f in self.findings:
            out[f.check][f.severity] += 1
        return {k: dict(v) for k, v in out.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary,
            "counts": self.counts(),
            "findings": [asdict(f) for f in self.findings],
            "balance": self.balance,
        }

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the report atomically as JSON."""
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2, default=str))
        return Path(path)


@dataclass
class _Seen:
    """What QC remembers about each image it read."""

    case_id: str
    split: str
    column: str
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    digest: str
    phash: bytes | None


def _digest(volume: Volume) -> str:
    h = hashlib.sha1(np.ascontiguousarray(volume.array).tobytes())
    h.update(str((volume.array.shape, volume.array.dtype)).encode())
    return h.hexdigest()


def _phash(volume: Volume) -> bytes:
    """256-bit perceptual hash of the middle slice.

    64-bit hashes are too coarse for medical images, which share their framing (every
    fundus is a disc on black): on the phantoms, distinct images came within 2 bits of each
    other, while at 256 bits they stay over 30 bits apart and a re-encoded, resized copy
    stays within 6.
    """
    plane = volume.array[:, volume.spatial_shape[0] // 2].astype(np.float32).mean(axis=0)
    lo, hi = np.percentile(plane, [1, 99])
    scaled = np.clip((plane - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    bits = imagehash.phash(Image.fromarray(scaled.astype(np.uint8)), hash_size=16).hash
    return np.packbits(bits.ravel()).tobytes()


def _check_labels(report: QcReport, manifest: Manifest, case: str, mask: Volume, column: str) -> None:
    schema_dict = manifest.info.get("label_schema")
    values = np.unique(mask.array)
    if schema_dict is not None:
        schema = LabelSchema.from_dict(schema_dict)
        remap = manifest.info.get("label_remap")
        allowed = {schema.background, *(int(k) for k in remap)} if remap else {schema.background, *schema.codes}
        outside = sorted(int(v) for v in values if v not in allowed)
        if outside:
            report.add(
                "error", "label-values", f"{column} holds values {outside} outside the schema {sorted(allowed)}", case
            )
    if values.size == 1 and values[0] == 0:
        report.add("warning", "empty-label", f"{column} is empty (background only)", case)


def _check_geometry(report: QcReport, case: str, volumes: dict[str, Volume]) -> None:
    items = list(volumes.items())
    ref_name, ref = items[0]
    for name, vol in items[1:]:
        if vol.spatial_shape != ref.spatial_shape:
            report.add(
                "error",
                "geometry",
                f"{name} has shape {vol.spatial_shape}, {ref_name} {ref.spatial_shape} (z, y, x); "
                "channels and masks must share the image grid",
                case,
            )
        elif not vol.geometry.isclose(ref.geometry, atol=1e-2):
            report.add(
                "error",
                "geometry",
                f"{name} spacing/origin/direction differ from {ref_name}: spacing {vol.geometry.spacing} vs "
                f"{ref.geometry.spacing}, origin {vol.geometry.origin} vs {ref.geometry.origin}",
                case,
            )


def _read_all(report: QcReport, manifest: Manifest, progress: Progress | None, perceptual: bool) -> list[_Seen]:
    seen: list[_Seen] = []
    npz_cache: dict[Path, Any] = {}
    table = manifest.table
    for i, (_, row) in enumerate(table.iterrows(), start=1):
        if progress is not None:
            progress("reading images", i, len(table))
        case = str(row["case_id"])
        volumes: dict[str, Volume] = {}
        for column in manifest.path_columns:
            value = row[column]
            if not isinstance(value, str) or not value.strip():
                if column not in manifest.label_columns:  # an image is needed; a mask may be absent
                    report.add("error", "empty-image", f"the {column} cell is empty: no image for this case", case)
                continue
            try:
                volume = read_case_image(manifest, row, column, npz_cache)
            except (MedsightError, OSError, ValueError, KeyError, IndexError) as exc:
                report.add("error", "unreadable", f"{column} {value}: {exc}", case)
                continue
            volumes[column] = volume
            if column in manifest.label_columns:
                _check_labels(report, manifest, case, volume, column)
            else:
                seen.append(
                    _Seen(
                        case,
                        str(row["split"]),
                        column,
                        volume.geometry.spacing,
                        volume.spatial_shape,
                        _digest(volume),
                        _phash(volume) if perceptual else None,
                    )
                )
        for group in _grids(manifest, volumes):
            if len(group) > 1:
                _check_geometry(report, case, group)
    for data in npz_cache.values():
        data.close()
    return seen


def _grids(manifest: Manifest, volumes: dict[str, Volume]) -> list[dict[str, Volume]]:
    """Images and masks that must share a grid: ``image_x``/``label_x`` pairs, or all of them."""
    suffixes = {c.partition("_")[2] for c in volumes if c.startswith("label_")}
    if not suffixes:
        return [volumes]
    return [{k: v for k, v in volumes.items() if k.partition("_")[2] == s} for s in suffixes]


def _outliers(report: QcReport, seen: list[_Seen], z_limit: float) -> None:
    by_column: dict[str, list[_Seen]] = defaultdict(list)
    for s in seen:
        by_column[s.column].append(s)
    for column, items in by_column.items():
        if len(items) < 5:
            continue
        for what, values in (
            ("spacing", np.log([s.spacing for s in items])),
            ("size", np.log(np.maximum([s.shape for s in items], 1))),
        ):
            median = np.median(values, axis=0)
            mad = np.median(np.abs(values - median), axis=0)
            scale = np.maximum(1.4826 * mad, 0.05)  # at least 5 % so uniform data sets never flag
            z = np.abs(values - median) / scale
            # a value shared by many cases is a second acquisition protocol, not an outlier
            _, group, counts = np.unique(np.rint(values / 0.1), axis=0, return_inverse=True, return_counts=True)
            alike = counts[group.ravel()]  # cases in the same ~10 % bin of log spacing/size
            rare = alike <= max(2, 0.02 * len(items))
            for s, row, is_rare in zip(items, z, rare, strict=True):
                if row.max() > z_limit and is_rare:
                    typical = np.exp(median).round(3).tolist()
                    actual = s.spacing if what == "spacing" else s.shape
                    report.add(
                        "warning",
                        f"{what}-outlier",
                        f"{column} {what} {actual} is far from the typical {typical} (z, y, x)",
                        s.case_id,
                    )


def _duplicates(report: QcReport, seen: list[_Seen], max_distance: int) -> None:
    by_digest: dict[str, list[_Seen]] = defaultdict(list)
    for s in seen:
        by_digest[s.digest].append(s)
    exact_pairs = set()
    for group in by_digest.values():
        if len(group) < 2:
            continue
        cases = sorted({s.case_id for s in group})
        splits = sorted({s.split for s in group})
        exact_pairs.update((a, b) for a in cases for b in cases if a < b)
        if len(cases) < 2:
            continue
        if len(splits) > 1:
            report.add("error", "duplicate", f"identical images in splits {splits}: cases {cases[:5]}", cases[0])
        else:
            report.add(
                "warning", "duplicate", f"identical images within split {splits[0]!r}: cases {cases[:5]}", cases[0]
            )
    hashed = [s for s in seen if s.phash is not None]
    if len(hashed) > _MAX_PAIRWISE:
        log.warning("near-duplicate search limited to exact perceptual-hash matches (%d images)", len(hashed))
        max_distance = 0
    if not hashed:
        return
    codes = np.frombuffer(b"".join(s.phash for s in hashed), dtype=np.uint8).reshape(len(hashed), -1)  # type: ignore[misc]
    for i in range(len(hashed)):
        distance = np.unpackbits(np.bitwise_xor(codes[i + 1 :], codes[i]), axis=1).sum(axis=1)
        for j in np.flatnonzero(distance <= max_distance):
            a, b = hashed[i], hashed[i + 1 + j]
            pair = tuple(sorted((a.case_id, b.case_id)))
            if a.case_id == b.case_id or pair in exact_pairs or a.split == b.split:
                continue
            report.add(
                "warning",
                "near-duplicate",
                f"{a.case_id} ({a.split or 'unsplit'}) and {b.case_id} ({b.split or 'unsplit'}) look alike "
                f"(perceptual hash distance {int(distance[j])})",
                a.case_id,
            )


def target_problems(
    values: pd.Series, kind: Literal["class", "finding", "number"], classes: Sequence[str] | None = None
) -> dict[str, pd.Series]:
    """What is wrong with a column of targets: problem -> mask of the rows it concerns.

    ``class``: a whole number 0..len(classes)-1 (whole and non-negative without ``classes``), never
    empty; ``finding``: 0, 1 or empty (unknown); ``number``: any number or empty. The one
    definition QC reports and training refuses by.
    """
    blank = values.isna() | values.astype(str).str.strip().eq("")
    numbers = pd.to_numeric(values.where(~blank), errors="coerce")
    problems: dict[str, pd.Series] = {"not a number": ~blank & numbers.isna()}
    if kind == "finding":
        problems["not 0 or 1 (a finding is 0, 1, or empty for unknown)"] = numbers.notna() & ~numbers.isin([0, 1])
    elif kind == "class":
        problems["empty (every case needs a class)"] = blank
        problems["not a whole number"] = numbers.notna() & (numbers % 1 != 0)
        problems["negative"] = numbers < 0
        if classes:
            listed = ", ".join(map(str, classes))
            problems[f"above {len(classes) - 1} (classes 0..{len(classes) - 1}: {listed})"] = numbers > len(classes) - 1
    return {what: bad for what, bad in problems.items() if bad.any()}


def _check_targets(report: QcReport, manifest: Manifest, classes: Sequence[str] | None, multilabel: bool) -> None:
    """``target`` a class within the classes; a recipe's findings 0, 1 or empty; any other
    ``target_<name>`` a number or empty."""
    table = manifest.table
    names = classes if classes is not None else manifest.info.get("label_names")
    findings = {f"target_{c}" for c in classes or ()} if multilabel else set()
    for column in manifest.target_columns:
        kind = "finding" if column in findings else "class" if column == "target" and not multilabel else "number"
        for what, bad in target_problems(table[column], kind, names).items():
            cases = table.loc[bad, "case_id"].astype(str).tolist()
            values = table.loc[bad, column].astype(str).tolist()
            examples = ", ".join(f"{c}: {v!r}" for c, v in zip(cases[:3], values[:3], strict=True))
            message = f"{column} is {what} for {len(cases)} case(s) (e.g. {examples}); fix or remove those rows"
            report.add("error", "target-values", message, cases[0])
    missing = sorted(findings - set(table.columns))
    if missing:
        report.add("error", "target-values", f"the manifest has no {missing} column(s) for the recipe's findings")


def _leakage(report: QcReport, table: pd.DataFrame) -> None:
    split = table[table["split"] != ""]
    per_patient = split.groupby("patient_id")["split"].unique()
    for patient, splits in per_patient.items():
        if len(splits) > 1:
            report.add(
                "error",
                "patient-leakage",
                f"patient {patient} is in splits {sorted(splits)}; re-split by patient (medsight data split)",
            )


def _balance(manifest: Manifest) -> dict[str, Any]:
    table = manifest.table
    split = table["split"].replace("", "unsplit")
    out: dict[str, Any] = {"cases_per_split": split.value_counts().to_dict()}
    targets = {}
    for column in manifest.target_columns:
        values = table[column]
        if values.dropna().nunique() > 20:
            continue
        targets[column] = pd.crosstab(values.fillna(-1), split).to_dict()
    out["targets"] = targets
    subgroups = {}
    first = manifest.target_columns[0] if manifest.target_columns else None
    for column in manifest.attribute_columns:
        values = table[column]
        if values.nunique() > 20 or values.nunique() < 2:
            continue
        key = values.astype(str)
        subgroups[column] = (
            pd.crosstab([key, split], table[first].fillna(-1)).to_dict(orient="index")
            if first
            else key.value_counts().to_dict()
        )
    out["subgroups"] = {c: {str(k): v for k, v in d.items()} for c, d in subgroups.items()}
    return out


def run_qc(
    manifest: Manifest,
    *,
    read_images: bool = True,
    perceptual_hash: bool = True,
    near_duplicate_distance: int = 16,
    outlier_z: float = 6.0,
    classes: Sequence[str] | None = None,
    multilabel: bool = False,
    progress: Progress | None = None,
) -> QcReport:
    """Check a manifest's files and table; see the module docstring for the checks.

    Args:
        manifest: What to check.
        read_images: Read every image and mask (needed for all file checks).
        perceptual_hash: Look for near-duplicates across splits (256-bit pHash of the middle slice).
        near_duplicate_distance: Largest Hamming distance (of 256 bits) between hashes counted as alike.
        outlier_z: Robust z-score (median/MAD of log spacing or size) above which a case is flagged.
        classes: The recipe's classes or grades: ``target`` must be a whole number below their
            count (default: the data set's ``label_names``, else only whole and non-negative).
        multilabel: ``target`` is a finding (0/1/empty) rather than a class.
        progress: Called as ``progress(stage, done, total)``.
    """
    report = QcReport()
    table = manifest.table
    report.summary = {
        "cases": len(table),
        "patients": int(table["patient_id"].nunique()),
        "dataset": manifest.info.get("dataset"),
        "splits": table["split"].replace("", "unsplit").value_counts().to_dict(),
    }
    for note in manifest.info.get("notes", []):
        report.add("info", "dataset-note", note)
    if (table["split"] == "").all():
        report.add("info", "not-split", "no split assigned yet: run `medsight data split` before training")
    _leakage(report, table)
    _check_targets(report, manifest, classes, multilabel)
    if read_images:
        seen = _read_all(report, manifest, progress, perceptual_hash)
        _outliers(report, seen, outlier_z)
        _duplicates(report, seen, near_duplicate_distance)
    report.balance = _balance(manifest)
    log.info("QC: %d error(s), %d warning(s)", len(report.errors), len(report.warnings))
    return report
