"""A prediction's results as DICOM objects beside each DICOM input: a SEG of its label map (for
models that make one, when something was found) and a TID 1500 measurement report (always; it
refers to the SEG when there is one, and places the findings the task locates). What ``medsight
predict --dicom-out`` writes."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medsight.core.errors import ConfigError, InputError, MedsightError
from medsight.export.dicom_sc import write_heat_overlay, write_overlay
from medsight.export.dicom_seg import Algorithm, source_headers, write_fractional_segmentation, write_segmentation
from medsight.export.dicom_sr import write_measurement_report

__all__ = ["DicomResults", "algorithm_of", "write_dicom_results", "write_heat_overlays"]

log = logging.getLogger(__name__)

_NOT_FIGURES = ("input", "output", "probabilities", "case_id", "patient_id")


@dataclass(frozen=True)
class DicomResults:
    """What :func:`write_dicom_results` wrote for one input."""

    input: str
    seg: Path | None  # None: no label map, nothing found, or not writable (``reason``)
    sr: Path | None  # None: the input is not DICOM, or its images are gone (``reason``)
    reason: str = ""
    overlay: Path | None = None  # the secondary capture, when asked for and something was found


def algorithm_of(predictor: Any) -> Algorithm:
    """The predictor's model as the DICOM objects name it: its recipe, and its weights' hash (the
    ONNX network's where a package has no weights)."""
    package = predictor.package
    weights = predictor.run_dir / package.weights
    hashed = weights if weights.is_file() else predictor.run_dir / str(package.onnx)
    return Algorithm.of_weights(package.recipe, hashed)


def write_dicom_results(
    predictor: Any, table: Any, folder: str | os.PathLike[str], *, overlay: bool = False, fractional: bool = False
) -> list[DicomResults]:
    """Write ``<name>_seg.dcm`` and ``<name>_sr.dcm`` per DICOM input of a prediction table (the rows
    :meth:`~medsight.inference.Predictor.predict_files` returns: ``input``, the label map ``output``
    for models that make one, and the figures) into ``folder``; with ``overlay``, also
    ``<name>_overlay.dcm``, a secondary capture of the label map over the slice where it has most
    voxels (:func:`~medsight.export.dicom_sc.write_overlay`). An input that is not DICOM, or whose
    objects cannot be written, is skipped with the reason (in the result and the log); the others
    go on. With ``fractional``, the SEG holds each structure's probability (the table's
    ``probabilities`` maps, :meth:`~medsight.inference.Predictor.predict_files` with
    ``probabilities``) instead of the label map.

    Raises:
        ConfigError: ``fractional`` without a ``probabilities`` column (a model that makes none).
    """
    from medsight.io import read

    if fractional and "probabilities" not in table:
        raise ConfigError("a fractional SEG is made of probability maps: predict with probabilities=True "
                          "(a segmentation model)")  # fmt: skip
    names = predictor.task.probability_structures() if fractional else ()

    classes = predictor.task.label_classes()
    algorithm = algorithm_of(predictor)
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"cannot make the folder {folder} for the DICOM results ({exc.strerror}); give another"
        ) from exc
    done = []
    for index, row in table.reset_index(drop=True).iterrows():
        source = str(row["input"])
        try:
            image = read(source)
        except MedsightError as exc:  # moved or changed since the prediction: the others go on
            log.warning("no DICOM results for %s: %s", source, exc)
            done.append(DicomResults(source, None, None, f"cannot read it again: {exc}"))
            continue
        if image.metadata.source_format not in ("dicom", "dicom-series"):
            log.warning("%s is not DICOM: no DICOM results (they are in the CSV)", source)
            done.append(DicomResults(source, None, None, "not a DICOM input"))
            continue
        name = f"{index:04d}_{Path(source).name.split('.')[0] or 'input'}"
        figures = {k: v for k, v in row.items() if k not in _NOT_FIGURES and isinstance(v, int | float | np.number)}
        seg, sc, reason = None, None, ""
        try:
            headers = source_headers(image, source)  # parsed once for the SEG, the overlay and the SR
            if classes and isinstance(row.get("output"), str):
                labels = np.asarray(read(row["output"]).array[0])
                if fractional and isinstance(row.get("probabilities"), str) and row["probabilities"]:
                    maps = np.asarray(read(row["probabilities"]).array)
                    seg = write_fractional_segmentation(image, maps, source, names, folder / f"{name}_seg.dcm",
                                                        algorithm=algorithm, headers=headers)  # fmt: skip
                else:  # binary (a cine has no probability maps)
                    seg = write_segmentation(image, labels, source, classes, folder / f"{name}_seg.dcm",
                                             algorithm=algorithm, headers=headers)  # fmt: skip
                reason = "" if seg else "nothing found: a report without a SEG"
                if overlay and seg is not None:
                    sc = write_overlay(image, labels, source, classes, folder / f"{name}_overlay.dcm",
                                       algorithm=algorithm, headers=headers)  # fmt: skip
            sr = write_measurement_report(image, source, folder / f"{name}_sr.dcm", algorithm=algorithm,
                                          figures=figures, segmentation=seg, headers=headers,
                                          findings=predictor.task.findings(row.to_dict()))  # fmt: skip
        except InputError as exc:  # this input cannot have them (e.g. multi-frame, sources gone); others go on
            log.warning("no DICOM results for %s: %s", source, exc)
            done.append(DicomResults(source, seg, None, str(exc)))
            continue
        done.append(DicomResults(source, seg, sr, reason, sc))
    return done


def write_heat_overlays(written: Sequence[DicomResults], folder: str | os.PathLike[str], *, algorithm: Algorithm,
                        heat_map: Callable[[str], Any]) -> list[tuple[str, str]]:  # fmt: skip
    """A heat map over each DICOM input that got a report, as a secondary capture beside it
    (``<n>_<name>_heatmap.dcm``); ``heat_map(input)`` gives its ``image``, ``heat`` (on the image's
    grid) and ``title`` (e.g. :func:`medsight.explain.image_heat_map`). Returns ``(input, reason)``
    for each input that could have none; the others go on."""
    skipped = []
    for result in (w for w in written if w.sr is not None):
        try:
            found = heat_map(result.input)
            write_heat_overlay(found.image, found.heat, result.input,
                               Path(folder) / result.sr.name.replace("_sr.dcm", "_heatmap.dcm"),
                               algorithm=algorithm, title=found.title)  # fmt: skip
        except MedsightError as exc:  # this image cannot have one (a 3D input, unreadable since)
            skipped.append((result.input, str(exc)))
    return skipped
