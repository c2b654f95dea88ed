"""The validation report of a run: one self-contained HTML page (and ``report.json``) for any task.

``medsight report RUN`` reads what ``medsight evaluate`` wrote (``metrics_<split>.json``,
``predictions_<split>.csv``) and the run's model package, and lays out:

- the model card: recipe, task, network, preprocessing, provenance (versions, commit, data hash);
- the data evaluated: cases, patients, label counts, counts per subgroup attribute in the manifest;
- every headline figure with its 95 % CI (resampled by patient);
- plots, where the task's outputs allow them: ROC curves and reliability diagrams for every
  probability with a label (binary, per finding, the image scores of detection), the FROC curves
  that detection reports, per-case Dice and HD95 box plots for segmentation;
- a failure gallery: per probability, the negatives scored highest and the positives scored
  lowest, with their images (2D detection: its detections and the true boxes drawn); for 3D
  segmentation the images of lowest mean Dice, segmented again (:mod:`.gallery3d`);
- calibration (ECE, slope, intercept with CIs);
- subgroups: per value of each attribute (and age band), the AUC of its cases against the
  rest's, with patient CIs, flagged when the group falls significantly below the rest;
- the evaluation's warnings; how the run was trained (splits by patient, checked for patients in
  two splits; settings); a reporting checklist in the style of CLAIM and TRIPOD+AI.

Plots are drawn with matplotlib (Agg) and embedded as PNG data: the page needs no other file and
no network.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from medsight.core.errors import InputError, MedsightError
from medsight.core.volume import Volume
from medsight.data.reading import read_image_file
from medsight.io.atomic import atomic_file, check_writable
from medsight.metrics.agreement import bland_altman
from medsight.metrics.bootstrap import bootstrap_cis
from medsight.metrics.calibration import reliability_bins
from medsight.metrics.classification import roc_auc
from medsight.metrics.decision import DEFAULT_THRESHOLDS, net_benefit, net_benefit_all
from medsight.metrics.survival import harrell_c, kaplan_meier
from medsight.tasks import ModelPackage
from medsight.tasks.results import json_ready
from medsight.validation.curves import GRID, confusion_matrix, pr_band, pr_on_grid, roc_band, roc_on_grid
from medsight.validation.explanations import explanation_section
from medsight.validation.figures import panels, png
from medsight.validation.gallery3d import segmentation_gallery

__all__ = [
    "SUBGROUP_COLUMNS",
    "build_report",
    "labelled_scores",
    "subgroup_rows",
    "survival_subgroup_rows",
    "write_index",
    "write_report",
]

log = logging.getLogger(__name__)

SUBGROUP_COLUMNS = ("site", "vendor", "manufacturer", "sex", "age_band", "view", "laterality", "density")
"""Manifest columns counted per value in the data summary (the subgroups a reader asks about)."""
_MAX_PLOTTED = 12  # curves per plot
_MAX_LEVELS = 20  # values listed per subgroup attribute
_PANELS = 6  # small panels per figure (decision curves, agreement)
_PLUMBING = {"localisation", "per_finding", "froc", "findings", "metrics", "details"}  # keys, not names


def _load(run_dir: Path, split: str) -> tuple[dict[str, Any], pd.DataFrame, ModelPackage]:
    metrics_file, predictions_file = run_dir / f"metrics_{split}.json", run_dir / f"predictions_{split}.csv"
    for file in (metrics_file, predictions_file):
        if not file.is_file():
            raise InputError(f"{file} does not exist; run `medsight evaluate {run_dir} --split {split}` first")
    try:
        metrics = json.loads(metrics_file.read_text())
        predictions = pd.read_csv(predictions_file, dtype={"case_id": str, "patient_id": str})
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the evaluation of {run_dir} ({exc}); run `medsight evaluate` again") from exc
    return metrics, predictions, ModelPackage.load(run_dir)


class _Labelled(NamedTuple):
    """A probability column with its 0/1 label column, over the rows where both are known."""

    name: str  # the finding, or "score" for a binary task's ``prob``
    column: str
    target: str
    known: np.ndarray  # rows of the table used
    labels: np.ndarray
    scores: np.ndarray


def labelled_scores(table: pd.DataFrame) -> list[_Labelled]:
    """Every probability column with a 0/1 label column: ``prob`` with ``target``, ``prob_<name>``
    with ``target_<name>``; unknown labels dropped."""
    pairs = []
    for column in table.columns:
        if column == "prob":
            name, target = "score", "target"
        elif column.startswith("prob_"):
            name = column.removeprefix("prob_")
            target = f"target_{name}"
        else:
            continue
        if target not in table.columns:
            continue
        labels = pd.to_numeric(table[target], errors="coerce").to_numpy(float)
        scores = pd.to_numeric(table[column], errors="coerce").to_numpy(float)
        known = np.isfinite(labels) & np.isfinite(scores)
        labels, scores = labels[known], scores[known]
        if len(labels) and set(np.unique(labels).tolist()) == {0.0, 1.0} and scores.min() >= 0 and scores.max() <= 1:
            pairs.append(_Labelled(name, column, target, known, labels.astype(int), scores))
    return pairs


def _walk(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Mapping[str, Any]]]:
    if isinstance(value, Mapping):
        yield path, value
        for key, item in value.items():
            yield from _walk(item, (*path, str(key)))


def _plots(metrics: Mapping[str, Any], table: pd.DataFrame, labelled: list[_Labelled]) -> list[dict[str, str]]:
    """The report's figures as ``{title, caption, src}`` (PNG data URLs)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plots = []
    pairs = [(p.name, p.labels, p.scores) for p in labelled[:_MAX_PLOTTED]]
    if pairs:
        plots += _curves_with_bands(table, labelled[:_MAX_PLOTTED])
        figure, axis = plt.subplots(figsize=(5.2, 4.6))
        for name, labels, scores in pairs:
            bins = reliability_bins(labels, scores)
            axis.plot(bins["mean_probability"], bins["observed"], marker="o", markersize=3, label=name, linewidth=1.2)
        axis.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=0.8)
        axis.set(xlabel="mean predicted probability", ylabel="observed share positive", xlim=(0, 1), ylim=(0, 1.01))
        axis.legend(fontsize=8, loc="upper left")
        plots.append({"title": "Reliability diagram", "caption": "Cases in ten equal-width probability bins; the "
                      "diagonal is perfect calibration.", "src": png(figure)})  # fmt: skip
    if pairs:
        plots.append(_decision_curves(pairs[:_PANELS]))
    referral = (metrics.get("referral") or {}).get("probabilities") or {}
    if referral:
        plots.append(_referral_curves(referral, metrics["referral"]))
    agreement = _agreement_pairs(metrics, table)[:_PANELS]
    if agreement:
        plots.append(_bland_altman(agreement))
    frocs = [(path, block["curve"]) for path, block in _walk(metrics) if isinstance(block.get("curve"), Mapping)
             and {"fps", "sensitivity"} <= set(block["curve"])][:_MAX_PLOTTED]  # fmt: skip
    if frocs:
        figure, axis = plt.subplots(figsize=(5.2, 4.6))
        for path, curve in frocs:
            fps, sensitivity = np.asarray(curve["fps"], float), np.asarray(curve["sensitivity"], float)
            if len(fps):
                name = " / ".join(p for p in path if p not in _PLUMBING) or "all findings"
                axis.plot(np.maximum(fps, 1e-3), sensitivity, label=name, linewidth=1.4)
        axis.set_xscale("log")
        axis.set(xlabel="false positives per image or scan", ylabel="sensitivity", ylim=(0, 1.01))
        axis.legend(fontsize=8, loc="lower right")
        plots.append({"title": "FROC", "caption": "Sensitivity against false positives per image (2D) or scan "
                      "(CT).", "src": png(figure)})  # fmt: skip
    if metrics.get("time_column") in table.columns and "risk" in table.columns:
        plots += _survival_plots(metrics, table)
    matrix = _confusion(table)
    if matrix is not None:
        plots.append(matrix)
    dice = [c for c in table.columns if c.startswith("dice_")]
    if dice:
        figure, axis = plt.subplots(figsize=(max(4.0, 1.1 * len(dice)), 4.2))
        values = [pd.to_numeric(table[c], errors="coerce").dropna().to_numpy() for c in dice]
        axis.boxplot(values, tick_labels=[c.removeprefix("dice_") for c in dice])
        axis.set(ylabel="Dice per case", ylim=(0, 1.01))
        plots.append({"title": "Dice per case", "caption": "Per region, over the evaluated cases.",
                      "src": png(figure)})  # fmt: skip
    hd95 = [c for c in table.columns if c.startswith("hd95_")]
    distances = [pd.to_numeric(table[c], errors="coerce").to_numpy(float) for c in hd95]
    distances = [v[np.isfinite(v)] for v in distances]
    if hd95 and any(len(v) for v in distances):
        figure, axis = plt.subplots(figsize=(max(4.0, 1.1 * len(hd95)), 4.2))
        axis.boxplot(distances, tick_labels=[c.removeprefix("hd95_") for c in hd95])
        axis.set(ylabel="HD95 per case (mm)")
        plots.append({"title": "HD95 per case", "caption": "95th-percentile Hausdorff distance per region, over "
                      "the evaluated cases where both prediction and reference hold the region.",
                      "src": png(figure)})  # fmt: skip
    return plots


def _survival_plots(metrics: Mapping[str, Any], table: pd.DataFrame) -> list[dict[str, str]]:
    """A risk model's figures: Kaplan-Meier curves of the thirds of predicted risk, and its predicted
    probability of the event by each horizon against the Kaplan-Meier one per quarter of risk."""
    import matplotlib.pyplot as plt

    time = pd.to_numeric(table[metrics["time_column"]], errors="coerce").to_numpy(float)
    event = pd.to_numeric(table[metrics.get("event_column", "event")], errors="coerce").to_numpy(float)
    risk = pd.to_numeric(table["risk"], errors="coerce").to_numpy(float)
    known = np.isfinite(time) & np.isfinite(event) & np.isfinite(risk)
    time, event, risk = time[known], event[known] == 1, risk[known]
    unit = metrics.get("time_unit") or "time"
    plots = []
    if len(time) >= 6:
        figure, axis = plt.subplots(figsize=(5.6, 4.4))
        thirds = np.searchsorted(np.quantile(risk, [1 / 3, 2 / 3]), risk, side="right")
        for k, name in enumerate(("lowest", "middle", "highest")):
            inside = thirds == k
            if inside.any():
                times, survival = kaplan_meier(time[inside], event[inside])
                axis.step(
                    np.r_[0.0, times],
                    np.r_[1.0, survival],
                    where="post",
                    linewidth=1.5,
                    label=f"{name} third of risk ({int(inside.sum())} cases, {int(event[inside].sum())} events)",
                )
        axis.set(xlabel=unit, ylabel="event-free (Kaplan-Meier)", ylim=(0, 1.02))
        axis.legend(fontsize=8, loc="best")
        plots.append({"title": "Survival by predicted risk", "caption": "Kaplan-Meier curves of the cases in each "
                      "third of the model's risk score: the wider apart, the better it separates early from late "
                      "events.", "src": png(figure)})  # fmt: skip
    calibration = {h: rows for h, rows in (metrics.get("calibration") or {}).items() if isinstance(rows, list) and rows}
    if calibration:
        figure, axis = plt.subplots(figsize=(5.2, 4.6))
        for horizon, rows in calibration.items():
            shown = [r for r in rows if r.get("observed") is not None]
            axis.plot([r["predicted"] for r in shown], [r["observed"] for r in shown], marker="o", markersize=4,
                      linewidth=1.2, label=f"by {horizon} {unit}")  # fmt: skip
        axis.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=0.8)
        axis.set(xlabel="mean predicted probability of the event", ylabel="observed (Kaplan-Meier)", xlim=(0, 1),
                 ylim=(0, 1.01))  # fmt: skip
        axis.legend(fontsize=8, loc="upper left")
        plots.append({"title": "Calibration at each horizon", "caption": "Per quarter of predicted probability: "
                      "its mean against the Kaplan-Meier share with the event by then; the diagonal is perfect "
                      "calibration.", "src": png(figure)})  # fmt: skip
    return plots


_BANDED = 6  # curves drawn with their band (the rest as lines)
_BAND_RESAMPLES = 200


def _curves_with_bands(table: pd.DataFrame, labelled: list[_Labelled]) -> list[dict[str, str]]:
    """ROC and precision-recall curves per probability, the first few with their 95 % bands
    (patients resampled)."""
    import matplotlib.pyplot as plt

    patients = (table["patient_id"] if "patient_id" in table.columns else table.index).astype(str).to_numpy()
    out = []
    for title, band, curve, labels_xy, reference in (
        ("ROC curves", roc_band, roc_on_grid, ("1 - specificity", "sensitivity"), "chance"),
        ("Precision-recall curves", pr_band, pr_on_grid, ("recall (sensitivity)", "precision (PPV)"), "prevalence"),
    ):
        figure, axis = plt.subplots(figsize=(5.2, 4.6))
        for k, item in enumerate(labelled):
            if item.labels.min() == item.labels.max():
                continue
            if k < _BANDED:
                estimate, low, high = band(item.labels, item.scores, groups=patients[item.known], n=_BAND_RESAMPLES)
            else:
                estimate = np.asarray(curve(item.labels, item.scores))
            (line,) = axis.plot(GRID, estimate, label=item.name, linewidth=1.4)
            if k < _BANDED:
                axis.fill_between(GRID, low, high, color=line.get_color(), alpha=0.12, linewidth=0)
            if reference == "prevalence":
                axis.axhline(item.labels.mean(), color=line.get_color(), linestyle=":", linewidth=0.8)
        if reference == "chance":
            axis.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=0.8)
        axis.set(xlabel=labels_xy[0], ylabel=labels_xy[1], xlim=(0, 1), ylim=(0, 1.01))
        axis.legend(fontsize=8, loc="lower right" if reference == "chance" else "lower left")
        caption = ("Per probability and its label on the evaluated split; bands: 95 % intervals resampling "
                   f"patients ({_BAND_RESAMPLES} times; the first {_BANDED} curves)"
                   + (". Dotted: each finding's prevalence, a useless model's precision." if reference ==
                      "prevalence" else "."))  # fmt: skip
        out.append({"title": title, "caption": caption, "src": png(figure)})
    return out


def _confusion(table: pd.DataFrame) -> dict[str, str] | None:
    """Classes or grades (one ``prob_<class>`` per class, an integer ``target``): the confusion
    matrix of the most probable class against the truth."""
    columns = [c for c in table.columns if c.startswith("prob_")]
    if "target" not in table.columns or len(columns) < 3 or any(f"target_{c[5:]}" in table.columns for c in columns):
        return None
    truth = pd.to_numeric(table["target"], errors="coerce")
    known = truth.notna() & (truth >= 0) & (truth < len(columns)) & (truth == truth.round())
    if not known.any():
        return None
    import matplotlib.pyplot as plt

    predicted = table.loc[known, columns].to_numpy(float).argmax(axis=1)
    counts = confusion_matrix(truth[known].to_numpy(int), predicted, len(columns))
    names = [c.removeprefix("prob_") for c in columns]
    figure, axis = plt.subplots(figsize=(1.0 * len(names) + 2.4, 0.9 * len(names) + 1.8))
    axis.imshow(counts, cmap="Blues")
    for (row, column), value in np.ndenumerate(counts):
        axis.text(column, row, str(value), ha="center", va="center", fontsize=8,
                  color="white" if value > counts.max() / 2 else "black")  # fmt: skip
    axis.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    axis.set_yticks(range(len(names)), names, fontsize=8)
    axis.set(xlabel="most probable class", ylabel="true class")
    return {"title": "Confusion matrix", "caption": f"{int(known.sum())} cases: the true class (rows) against the most "
            "probable one (columns).", "src": png(figure)}  # fmt: skip


def _referral_curves(curves: Mapping[str, Any], about: Mapping[str, Any]) -> dict[str, str]:
    """Per probability, its AUC on the kept cases against the share referred: most uncertain first
    by the predictions' spread, and by the probability's own closeness to 0.5."""
    figure, axes = panels(min(len(curves), _PANELS))
    for axis, (name, pair) in zip(axes, list(curves.items())[:_PANELS], strict=False):
        for key, style, label in (("spread", "-", "by spread"), ("ambiguity", "--", "by closeness to 0.5")):
            points = pair[key]
            rates = [100 * p["rate"] for p in points]
            estimate = [np.nan if p.get("estimate") is None else p["estimate"] for p in points]
            axis.plot(rates, estimate, style, marker="o", markersize=3, label=label, linewidth=1.3)
            low = [np.nan if p.get("low") is None else p["low"] for p in points]
            high = [np.nan if p.get("high") is None else p["high"] for p in points]
            axis.fill_between(rates, low, high, alpha=0.12)
        axis.set(title=name, xlabel="% of cases referred", ylabel="AUC on the cases kept")
        axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    caption = (f"The most uncertain cases referred to a reader first: by the spread of {about.get('samples')} "
               f"predictions ({about.get('method')}), and by how close the probability itself is to 0.5 (what one "
               "prediction already says). Bands: 95 % CIs resampling patients.")  # fmt: skip
    return {"title": "Referral curves", "caption": caption, "src": png(figure)}


def _number(value: Any) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):.3f}"


def _with_interval(block: Mapping[str, Any]) -> tuple[str, str]:
    """``(estimate, "[low, high]")`` as text; an undefined figure has no interval."""
    estimate = _number(block.get("estimate"))
    return estimate, (f"[{_number(block.get('low'))}, {_number(block.get('high'))}]" if estimate != "—" else "")


def _decision_curves(pairs: list[tuple[str, np.ndarray, np.ndarray]]) -> dict[str, str]:
    figure, axes = panels(len(pairs))
    thresholds = DEFAULT_THRESHOLDS
    for axis, (name, labels, scores) in zip(axes, pairs, strict=True):
        model, everyone = net_benefit(labels, scores, thresholds), net_benefit_all(labels, thresholds)
        axis.plot(thresholds, model, label="model", linewidth=1.4)
        axis.plot(thresholds, everyone, label="act on all", color="0.5", linewidth=1.0)
        axis.axhline(0.0, color="0.2", linewidth=0.8, label="act on none")
        top = max(float(labels.mean()), 0.01)
        axis.set(title=name, xlabel="threshold probability", ylabel="net benefit", xlim=(0, 1),
                 ylim=(-0.25 * top, 1.1 * top))  # fmt: skip
        axis.legend(fontsize=7)
    figure.tight_layout()
    return {"title": "Decision curves", "caption": "Net benefit of acting on the cases at or above each threshold "
            "probability (Vickers & Elkin 2006); the model helps where its curve lies above both others.",
            "src": png(figure)}  # fmt: skip


def _agreement_pairs(metrics: Mapping[str, Any], table: pd.DataFrame) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, measured, reference)`` for every measurement that has a reference: the per-case
    ``X`` / ``reference_X`` columns of the predictions (volumes) and of the per-patient lists in
    the evaluation (cardiac function: EF, volumes, mass)."""
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    sources = [table, *(pd.DataFrame(v) for _, block in _walk(metrics) for v in block.values()
                        if isinstance(v, list) and v and all(isinstance(x, Mapping) for x in v))]  # fmt: skip
    for frame in sources:
        for column in frame.columns:
            measured = str(column).removeprefix("reference_")
            if column == measured or measured not in frame.columns or measured in found:
                continue
            pair = (pd.to_numeric(frame[measured], errors="coerce").to_numpy(float),
                    pd.to_numeric(frame[column], errors="coerce").to_numpy(float))  # fmt: skip
            if np.sum(np.isfinite(pair[0]) & np.isfinite(pair[1])) >= 2:
                found[measured] = pair
    ejection = sorted(name for name in found if name.endswith("_ef"))  # EF first: the headline of cardiac function
    return [(name, *found[name]) for name in [*ejection, *sorted(set(found) - set(ejection))]]


def _bland_altman(pairs: list[tuple[str, np.ndarray, np.ndarray]]) -> dict[str, str]:
    figure, axes = panels(len(pairs))
    for axis, (name, measured, reference) in zip(axes, pairs, strict=True):
        known = np.isfinite(measured) & np.isfinite(reference)
        mean, difference = (measured[known] + reference[known]) / 2, measured[known] - reference[known]
        agreement = bland_altman(measured, reference)
        axis.scatter(mean, difference, s=12)
        for value, style in ((agreement.bias, "-"), (agreement.lower, "--"), (agreement.upper, "--")):
            if not math.isnan(value):
                axis.axhline(value, color="0.3", linestyle=style, linewidth=0.9)
        axis.set(title=f"{name} (bias {agreement.bias:.2f})", xlabel="mean of measured and reference",
                 ylabel="measured - reference")  # fmt: skip
    figure.tight_layout()
    return {"title": "Bland-Altman agreement", "caption": "Per case or patient: the difference against the mean, "
            "with the bias and the 95 % limits of agreement (Bland & Altman 1986).", "src": png(figure)}  # fmt: skip


_GALLERY = 3  # worst false positives and worst false negatives shown per probability
_GALLERY_PROBABILITIES = 3


def _source(path: Any, folder: Path | None) -> Path | None:
    if not isinstance(path, str) or not path:
        return None
    candidate = Path(path)
    if not candidate.is_absolute() and folder is not None:
        candidate = folder / candidate
    return candidate if candidate.is_file() else None


def _thumbnail(path: Path) -> tuple[Volume, np.ndarray] | None:
    """An image file as read (DICOM MONOCHROME1 inverted) and a 2D view of it (the middle slice of a
    volume) scaled to [0, 1]; None if unreadable."""
    try:
        volume = read_image_file(path)
        array = np.asarray(volume.array, dtype=float)
    except (MedsightError, OSError, ValueError) as exc:  # an image that cannot be read is left out, not fatal
        log.info("failure gallery: %s left out (%s)", path, exc)
        return None
    image = array[0]
    while image.ndim > 2:
        image = image[image.shape[0] // 2]
    low, high = np.nanpercentile(image, [1, 99]) if image.size else (0.0, 1.0)
    return volume, np.clip((image - low) / max(high - low, 1e-6), 0, 1)


# ``maps(images, name)``: per image read for the gallery, the network's input and an RGBA map of
# probability ``name`` over it, with the target explained (the command line gives ``medsight.explain.GalleryMaps(run)``)
GalleryMaps = Callable[[Sequence[Volume], str], "tuple[str, list[tuple[np.ndarray, np.ndarray]]] | None"]


def _gallery(
    table: pd.DataFrame, labelled: list[_Labelled], folder: Path | None, maps_of: GalleryMaps | None = None
) -> list[dict[str, str]]:
    """Per probability (the first few), the negatives scored highest and the positives scored lowest,
    with their images (and, for 2D detection, the detections of that finding in red and the true
    boxes in green); beside each, with ``maps_of``, the model's map of that probability on the image
    it read."""
    if "image" not in table.columns:
        return []
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    out = []
    for name, column, target, *_ in labelled[:_GALLERY_PROBABILITIES]:
        labels = pd.to_numeric(table[target], errors="coerce")
        negatives = table[labels == 0].sort_values(column, ascending=False).head(_GALLERY)
        positives = table[labels == 1].sort_values(column, ascending=True).head(_GALLERY)
        chosen = [("negative", row) for _, row in negatives.iterrows()]
        chosen += [("positive", row) for _, row in positives.iterrows()]
        found = [(kind, row, p) for kind, row in chosen if (p := _source(row["image"], folder))]
        shown = [(kind, row, read[1], read[0]) for kind, row, p in found if (read := _thumbnail(p)) is not None]
        if not shown:
            continue
        explained = maps_of([volume for *_, volume in shown], name) if maps_of is not None else None
        maps = explained[1] if explained is not None and len(explained[1]) == len(shown) else None
        pairs = maps is not None
        columns = 4 if pairs else min(len(shown), 3)
        rows = math.ceil(len(shown) * (2 if pairs else 1) / columns)
        figure, grid = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.1 * rows), squeeze=False)
        axes = list(grid.ravel())
        for axis in axes:
            axis.axis("off")
        for j, (kind, row, image, _) in enumerate(shown):
            axis = axes[2 * j if pairs else j]
            axis.imshow(image, cmap="gray", interpolation="lanczos")
            _boxes(axis, row, name, Rectangle)
            axis.set_title(f"{kind}: {row['case_id']}\np = {float(row[column]):.3f}", fontsize=8)
            if maps is not None and explained is not None:
                picture, heat = maps[j]
                axes[2 * j + 1].imshow(picture, cmap="gray", interpolation="lanczos")
                axes[2 * j + 1].imshow(heat, interpolation="bilinear")
                axes[2 * j + 1].set_title(f"Grad-CAM: {explained[0]}", fontsize=8)
        figure.tight_layout()
        caption = ("The negatives scored highest and the positives scored lowest on the evaluated split "
                   "(detections red, true boxes green)")  # fmt: skip
        caption += (", each beside the model's Grad-CAM map of the probability on the image it read."
                    if pairs else ".")  # fmt: skip
        out.append({"title": f"Worst errors: {name}", "caption": caption, "src": png(figure)})
        plt.close("all")
    return out


def _boxes(axis: Any, row: pd.Series, name: str, rectangle: Any) -> None:
    """Draw a 2D detection task's detections of ``name`` and the true boxes naming it on ``axis``."""
    try:
        marks = json.loads(row["detections"]) if isinstance(row.get("detections"), str) else []
        truths = json.loads(row["boxes"]) if isinstance(row.get("boxes"), str) and row["boxes"] else []
    except ValueError:
        return
    for mark in marks:
        if mark.get("finding", name) in (name, "score") or name == "score":
            axis.add_patch(rectangle((mark["x0"], mark["y0"]), mark["x1"] - mark["x0"], mark["y1"] - mark["y0"],
                                     fill=False, edgecolor="red", linewidth=1))  # fmt: skip
    for box in truths:
        if name == "score" or str(box.get("label", "")).strip().lower() == name.lower():
            axis.add_patch(rectangle((box["x"], box["y"]), box["w"], box["h"], fill=False, edgecolor="lime",
                                     linewidth=1))  # fmt: skip


def _figure_rows(metrics: Mapping[str, Any]) -> list[dict[str, str]]:
    rows = []
    for name, block in (metrics.get("figures") or {}).items():
        estimate, interval = _with_interval(block)
        rows.append({"name": name, "estimate": estimate, "interval": interval,
                     "note": block.get("undefined") or ""})  # fmt: skip
    return rows


def _calibration_rows(metrics: Mapping[str, Any]) -> list[dict[str, str]]:
    rows = []
    for path, block in _walk(metrics):
        if path and path[-1] == "calibration" and "ece" in block:
            where = " / ".join(p for p in path[:-1] if p not in _PLUMBING) or "score"
            rows.append({"name": where, **{key: " ".join(_with_interval(block[key])).strip()
                                           for key in ("ece", "slope", "intercept")}})  # fmt: skip
    return rows


def _data_summary(metrics: Mapping[str, Any], table: pd.DataFrame) -> dict[str, Any]:
    labels = {}
    for column in table.columns:
        scored = column == "target" or (column.startswith("target_") and f"prob_{column[7:]}" in table.columns)
        if scored:  # the labels the model is scored on (a manifest may carry more)
            counts = table[column].value_counts(dropna=False)
            labels[column] = ", ".join(f"{'unknown' if pd.isna(k) else k}: {int(v)}" for k, v in counts.items())
    subgroups = {}
    for column in SUBGROUP_COLUMNS:
        if column in table.columns and table[column].notna().any():
            counts = table[column].value_counts(dropna=False).head(_MAX_LEVELS)
            subgroups[column] = ", ".join(f"{'unknown' if pd.isna(k) else k}: {int(v)}" for k, v in counts.items())
    return {"cases": metrics.get("cases", len(table)), "patients": metrics.get("patients"),
            "labels": labels, "subgroups": subgroups}  # fmt: skip


_AGE_BANDS = (0, 40, 50, 60, 70, 80, 200)  # years: <40, 40-49, ..., 80+
_MIN_GROUP = 10  # cases a subgroup needs to be scored
# resamples per subgroup at most: every value of every attribute for every probability is bootstrapped
# (14 findings x a dozen groups on a large test set took minutes at 1,000)
_SUBGROUP_RESAMPLES = 400
_MIN_CLASS = 5  # positive and negative cases it (and the rest) need: fewer leave the AUC undefined in many resamples


def _attributes(table: pd.DataFrame) -> dict[str, pd.Series]:
    """The subgroup attributes present: the manifest's columns, and age bands from an ``age`` column."""
    found = {c: table[c].astype("string") for c in SUBGROUP_COLUMNS if c in table.columns and table[c].notna().any()}
    if "age_band" not in found and "age" in table.columns:
        age = pd.to_numeric(table["age"], errors="coerce")
        if age.notna().any():
            labels = [f"{a}-{b - 1}" for a, b in itertools.pairwise(_AGE_BANDS)]
            labels[0], labels[-1] = f"<{_AGE_BANDS[1]}", f"{_AGE_BANDS[-2]}+"
            found["age_band"] = pd.cut(age, _AGE_BANDS, right=False, labels=labels).astype("string")
    return found


def _group_vs_rest(inside: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> list[float]:
    """AUC within the group, AUC of the rest, and their difference."""
    group = roc_auc(labels[inside], scores[inside]) if inside.any() else float("nan")
    rest = roc_auc(labels[~inside], scores[~inside]) if (~inside).any() else float("nan")
    return [group, rest, group - rest]


_MIN_EVENTS = 3  # events a subgroup (and the rest) needs for its C-index


def _concordance_vs_rest(inside: np.ndarray, time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> list[float]:
    """Harrell's C within the group, of the rest, and their difference (NaN where no pair compares)."""

    def c_index(part: np.ndarray) -> float:
        return harrell_c(time[part], event[part], risk[part]) if part.any() else float("nan")

    group, rest = c_index(inside), c_index(~inside)
    return [group, rest, group - rest]


def survival_subgroup_rows(
    table: pd.DataFrame, metrics: Mapping[str, Any], *, bootstrap: int = 1000
) -> list[dict[str, Any]]:
    """A risk model's subgroups: per attribute value, Harrell's C-index of its cases and of the rest, with
    patient-resampled CIs, and ``below`` when the difference's whole interval lies under 0."""
    time_column, event_column = metrics.get("time_column"), metrics.get("event_column")
    if time_column not in table.columns or event_column not in table.columns or "risk" not in table.columns:
        return []
    time = pd.to_numeric(table[time_column], errors="coerce").to_numpy(float)
    event = pd.to_numeric(table[event_column], errors="coerce").to_numpy(float)
    risk = pd.to_numeric(table["risk"], errors="coerce").to_numpy(float)
    known = np.isfinite(time) & np.isfinite(event) & np.isfinite(risk)
    time, event, risk = time[known], event[known], risk[known]

    def too_few(inside: np.ndarray) -> str | None:
        events = (int(event[inside].sum()), int(event[~inside].sum()))
        if inside.sum() < _MIN_GROUP or (~inside).sum() < _MIN_GROUP or min(events) < _MIN_EVENTS:
            return (f"fewer than {_MIN_GROUP} cases or {_MIN_EVENTS} events in the group or the rest (events: "
                    f"group {events[0]}, rest {events[1]})")  # fmt: skip
        return None

    return [row for attribute, values in _attributes(table).items()
            for row in _group_rows("risk (Harrell C)", "C", attribute, values[known], _patients(table)[known],
                                   (time, event, risk), _concordance_vs_rest, too_few, bootstrap)]  # fmt: skip


def _patients(table: pd.DataFrame) -> pd.Series:
    return (table["patient_id"] if "patient_id" in table.columns else table.index.to_series()).astype(str)


def _group_rows(
    score: str,
    figure: str,
    attribute: str,
    values: pd.Series,
    patients: pd.Series,
    arrays: tuple[np.ndarray, ...],
    vs_rest: Any,
    too_few: Any,
    bootstrap: int,
) -> list[dict[str, Any]]:
    """Per value of one attribute: its cases, ``figure`` within the group and in the rest
    (``vs_rest(inside, *arrays)``) and their difference, with patient-resampled CIs; ``undefined`` where
    ``too_few(inside)`` says why it cannot be scored, ``below`` when the difference lies wholly under 0."""
    values = values.fillna("unknown").to_numpy()
    rows = []
    for value in sorted(set(values.tolist()), key=lambda v: (not v.startswith("<"), v)):  # "<40" first
        inside = values == value
        row = {"probability": score, "attribute": attribute, "group": value, "cases": int(inside.sum())}
        reason = too_few(inside)
        if reason:
            rows.append(row | {"undefined": reason})
            continue
        group, rest, difference = bootstrap_cis(
            lambda i, *a: vs_rest(i.astype(bool), *a), inside.astype(float), *arrays,
            names=[f"{figure} in {attribute} {value}", f"{figure} outside {attribute} {value}",
                   f"{figure} difference for {attribute} {value}"],
            groups=patients.to_numpy(), n_resamples=bootstrap,
        )  # fmt: skip
        high = difference["high"]
        below = high is not None and not math.isnan(high) and high < 0
        rows.append(row | {"auc": group, "rest_auc": rest, "difference": difference, "below": below})
    return rows


def subgroup_rows(table: pd.DataFrame, *, bootstrap: int = 1000) -> list[dict[str, Any]]:
    """Per subgroup attribute value and labelled probability: its cases, its AUC and the AUC of the
    other cases, with 95 % CIs that resample patients, and ``below`` when the group's AUC falls
    short of the rest's with the difference's whole interval below 0."""
    attributes = _attributes(table)
    rows = []
    for name, _, _, known, labels, scores in labelled_scores(table):

        def too_few(inside: np.ndarray, labels: np.ndarray = labels) -> str | None:
            if inside.sum() < _MIN_GROUP or (~inside).sum() < _MIN_GROUP:
                return f"fewer than {_MIN_GROUP} cases in the group or the rest"
            counts = [int(np.sum(labels[part] == k)) for part in (inside, ~inside) for k in (0, 1)]
            if min(counts) < _MIN_CLASS:
                return (f"under {_MIN_CLASS} cases of a class (positive / negative: group {counts[1]} / {counts[0]}, "
                        f"rest {counts[3]} / {counts[2]})")  # fmt: skip
            return None

        for attribute, values in attributes.items():
            rows += _group_rows(name, f"{name} AUC", attribute, values[known], _patients(table)[known],
                                (labels, scores), _group_vs_rest, too_few, bootstrap)  # fmt: skip
    return rows


def _training(run_dir: Path) -> dict[str, Any]:
    """How the run was trained: cases and patients per split (``splits.csv``), patients found in more
    than one split, epochs run (``metrics.jsonl``) and the training settings (``config.json``)."""
    out: dict[str, Any] = {"splits": {}, "patients_in_several_splits": None, "settings": {}, "epochs_run": None}
    splits = run_dir / "splits.csv"
    if splits.is_file():
        table = pd.read_csv(splits, dtype=str)
        if {"split", "patient_id"} <= set(table.columns):
            out["splits"] = {split: {"cases": len(group), "patients": int(group["patient_id"].nunique())}
                             for split, group in table.groupby("split")}  # fmt: skip
            out["patients_in_several_splits"] = int((table.groupby("patient_id")["split"].nunique() > 1).sum())
    log_file = run_dir / "metrics.jsonl"
    if log_file.is_file():
        out["epochs_run"] = sum(1 for line in log_file.read_text().splitlines() if line.strip())
    config = run_dir / "config.json"
    if config.is_file():
        try:
            settings = json.loads(config.read_text())
        except ValueError:
            settings = {}
        keys = ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "schedule", "precision", "seed")
        out["settings"] = {k: settings[k] for k in keys if k in settings}
        augment = (settings.get("recipe") or {}).get("augment")
        if augment:
            out["settings"]["augmentation"] = augment
    return out


_UNKNOWN = "not known to medsight: the author must state it"


def _checklist(content: Mapping[str, Any]) -> list[dict[str, str]]:
    """Reporting items in the style of CLAIM (2024) and TRIPOD+AI, each with what this report says
    about it: ``reported`` / ``checked`` / ``failed`` / ``not applicable`` / not known."""
    training, provenance = content["training"], content["provenance"]
    several = training["patients_in_several_splits"]
    if several is None:
        partition = ("not known", "the run keeps no splits.csv with patients")
    elif several:
        partition = ("failed", f"{several} patient(s) in more than one split: the test figures are optimistic")
    else:
        sizes = "; ".join(f"{k} {v['cases']} cases / {v['patients']} patients" for k, v in training["splits"].items())
        partition = ("checked", f"no patient in two splits ({sizes})")
    subgroups = [g for g in content["subgroups"] if "auc" in g]
    survival = any(p.get("title") == "Calibration at each horizon" for p in content.get("plots") or [])
    tabular = content["model"]["task"].get("kind") == "risk"
    items = [
        ("Intended use, clinical setting and users", "not known", _UNKNOWN),
        ("Data source and its version", "reported" if provenance.get("training data hash") else "not known",
         f"training manifest {provenance.get('training manifest')}, hash {provenance.get('training data hash')}"),
        ("Reference standard and how it was established", "not known", _UNKNOWN),
        ("Partition into training, validation and test sets, by patient", *partition),
        ("Model: architecture and preprocessing", "reported", "model card below"),
        ("Training: optimiser, schedule, epochs, augmentation, seed",
         "reported" if training["settings"] else "not known", f"{training['epochs_run']} epochs run"),
        ("Performance with 95 % confidence intervals (patients resampled)",
         "reported" if content["figures"] else "not known", f"{len(content['figures'])} headline figures"),
        ("Calibration", "reported" if content["calibration"] or survival else "not applicable",
         "ECE, slope, intercept" if content["calibration"] else "predicted against Kaplan-Meier at each horizon"
         if survival else "no probability with a label"),
        ("Clinical utility (decision curves)", "reported" if content["calibration"] else "not applicable", ""),
        ("Performance in subgroups", "reported" if subgroups else "not known",
         f"{len(subgroups)} subgroup(s) scored" if subgroups else "no subgroup attribute with enough cases"),
        ("Failure analysis", "reported" if content["gallery"] else "not applicable",
         "failure gallery" if content["gallery"] else "no images with labelled probabilities or label maps"),
        ("Explainability: attribution maps checked for faithfulness and against randomised weights",
         "reported" if content["explanations"] else "not known",
         "explanations section" if content["explanations"] else "not available for risk models yet" if tabular
         else "run `medsight explain RUN --data MANIFEST`"),
        ("Uncertainty of single predictions (referral of the most uncertain)",
         "reported" if content["referral"] else "not known",
         f"referral curves ({content['referral']})" if content["referral"]
         else "run `medsight evaluate RUN --uncertainty tta` (or mc-dropout, ensemble)"),
        ("Software and versions", "reported", "provenance below"),
    ]  # fmt: skip
    return [{"item": item, "status": status, "where": where} for item, status, where in items]


def build_report(
    run_dir: str | os.PathLike[str], *, split: str = "test", explainer: Callable[[Path], GalleryMaps] | None = None
) -> dict[str, Any]:
    """Everything the page shows, as data (plots as PNG data URLs); ``explainer(run_dir)`` gives the
    failure gallery's maps (``medsight.explain.GalleryMaps``).

    Raises:
        InputError: the run was not evaluated on ``split`` (``medsight evaluate`` writes what is read).
    """
    run_dir = Path(run_dir)
    metrics, table, package = _load(run_dir, split)
    maps_of = explainer(run_dir) if explainer is not None else None
    provenance = package.provenance
    resamples = min(int(metrics.get("bootstrap_resamples") or 1000), _SUBGROUP_RESAMPLES)
    labelled = labelled_scores(table)
    content = {
        "title": f"{package.recipe}: validation on the {split} split",
        "split": split,
        "model": {
            "recipe": package.recipe,
            "task": json_ready(package.task.model_dump()),
            "network": package.model.name,
            "input channels": package.in_channels,
            "preprocessing": json_ready(package.preprocess),
            "numeric precision in evaluation": metrics.get("precision"),
            "temperature scaling (fitted on validation)": {
                name: round(float(group["temperature"]), 3)
                for name, group in (metrics.get("temperature_scaling") or {}).items()
            }
            or "none",
        },
        "provenance": {
            "created": provenance.created,
            "git commit": provenance.git_commit,
            "training data hash": provenance.data_hash,
            "training manifest": provenance.manifest,
            "seed": provenance.seed,
            **{f"{name} version": version for name, version in sorted(provenance.versions.items())},
        },
        "data": _data_summary(metrics, table),
        "figures": _figure_rows(metrics),
        "bootstrap": metrics.get("bootstrap_resamples"),
        "calibration": _calibration_rows(metrics),
        "subgroups": subgroup_rows(table, bootstrap=resamples)
        + survival_subgroup_rows(table, metrics, bootstrap=resamples),
        "warnings": list(metrics.get("warnings") or []),
        "plots": _plots(metrics, table, labelled),
        "gallery": _gallery(table, labelled, Path(provenance.manifest).parent if provenance.manifest else None, maps_of)
        or segmentation_gallery(run_dir, table, metrics.get("manifest") or provenance.manifest),
        "training": _training(run_dir),
        "subgroup_resamples": resamples,
        "explanations": explanation_section(run_dir),
        "referral": (metrics.get("referral") or {}).get("method"),
    }
    content["checklist"] = _checklist(content)
    return content


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ r.title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 64rem; color: #222; line-height: 1.4 }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem } td, th { border-bottom: 1px solid #ddd;
padding: 0.25rem 0.8rem; text-align: left; vertical-align: top } th { background: #f4f4f4 }
figure { display: inline-block; margin: 0 1.5rem 1.5rem 0; max-width: 30rem } img { max-width: 100% }
.warn { color: #8a4b00 } code { font-size: 0.85em; word-break: break-all }
</style></head><body>
<h1>{{ r.title }}</h1>
<p>Research use only: this report describes how a model performed on one data split; it is not
a regulatory clearance. Every interval is a 95 % percentile bootstrap interval resampling
patients ({{ r.bootstrap }} resamples).</p>
<h2>Headline figures</h2>
{% if r.figures %}<table><tr><th>figure</th><th>estimate</th><th>95 % CI</th><th></th></tr>
{% for f in r.figures %}<tr><td>{{ f.name }}</td><td>{{ f.estimate }}</td><td>{{ f.interval }}</td>
<td>{{ f.note }}</td></tr>{% endfor %}</table>{% else %}<p class="warn">This evaluation was written before
evaluations listed their headline figures: run <code>medsight evaluate</code> on the run again.</p>{% endif %}
<h2>Data evaluated</h2>
<table><tr><th>cases</th><td>{{ r.data.cases }}</td></tr><tr><th>patients</th><td>{{ r.data.patients }}</td></tr>
{% for k, v in r.data.labels.items() %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}
{% for k, v in r.data.subgroups.items() %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</table>
{% if r.plots %}<h2>Plots</h2>
{% for p in r.plots %}<figure><img src="{{ p.src }}" alt="{{ p.title }}"><figcaption><b>{{ p.title }}.</b>
{{ p.caption }}</figcaption></figure>{% endfor %}{% endif %}
{% if r.gallery %}<h2>Failure gallery</h2>
{% for p in r.gallery %}<figure><img src="{{ p.src }}" alt="{{ p.title }}"><figcaption><b>{{ p.title }}.</b>
{{ p.caption }}</figcaption></figure>{% endfor %}{% endif %}
{% if r.explanations %}<h2>Explanations</h2>
<p>From <code>{{ r.explanations.source }}</code> (<code>medsight explain</code>). Faithfulness: the area
between the insertion and deletion curves in the map's pixel order less the same in a random order
(above 0: the map ranks pixels better than chance). Energy in box: the share of the map's positive
mass inside the true boxes, against the share of the image they cover. Randomised weights: the rank
correlation of each map with the map of a network whose weights were drawn again (Adebayo et al.
2018); a map that does not change shows the image, not what the model learned.</p>
<table><tr><th>method</th><th>images</th><th>faithfulness [95 % CI]</th><th>deletion / insertion AUC</th>
<th>energy in box</th><th>pointing game</th><th>randomised weights</th></tr>
{% for m in r.explanations.rows %}<tr><td>{{ m.method }}</td><td>{{ m.images }}</td><td>{{ m.faithfulness }}</td>
<td>{{ m["deletion / insertion"] }}</td><td>{{ m["energy in box"] }}</td><td>{{ m["pointing game"] }}</td>
<td{% if "NOT" in m["randomised weights"] %} class="warn"{% endif %}>{{ m["randomised weights"] }}</td></tr>
{% endfor %}</table>
{% for p in r.explanations.overlays %}<figure><img src="{{ p.src }}" alt="{{ p.title }}"><figcaption>
{{ p.title }} (true boxes green, the map's peak cyan)</figcaption></figure>{% endfor %}{% endif %}
{% if r.calibration %}<h2>Calibration</h2>
<table><tr><th>probability</th><th>ECE</th><th>slope</th><th>intercept</th></tr>
{% for c in r.calibration %}<tr><td>{{ c.name }}</td><td>{{ c.ece }}</td><td>{{ c.slope }}</td>
<td>{{ c.intercept }}</td></tr>{% endfor %}</table>
<p>ECE: mean gap between observed and predicted rates over ten bins (0 ideal). Slope: 1 ideal,
below 1 the predictions are too extreme. Intercept (slope held at 1): 0 ideal, above 0 the model
predicts too low on average.</p>{% endif %}
{% if r.subgroups %}<h2>Subgroups</h2>
<table><tr><th>score</th><th>attribute</th><th>group</th><th>cases</th><th>AUC or C-index [95 % CI]</th>
<th>the same of the rest</th><th>difference [95 % CI]</th><th></th></tr>
{% for g in r.subgroups %}<tr><td>{{ g.probability }}</td><td>{{ g.attribute }}</td><td>{{ g.group }}</td>
<td>{{ g.cases }}</td>{% if g.get('undefined') %}<td colspan="4">{{ g.undefined }}</td>{% else %}
<td>{{ fmt(g.auc) }}</td><td>{{ fmt(g.rest_auc) }}</td><td>{{ fmt(g.difference) }}</td>
<td class="warn">{{ "below the rest" if g.below else "" }}</td>{% endif %}</tr>{% endfor %}</table>
<p>A group is marked when its AUC (a risk model's: its C-index) falls below that of the other cases
with the difference's whole 95 % interval (patients resampled, {{ r.subgroup_resamples }} times) below 0.</p>{% endif %}
<h2>Warnings</h2>
{% if r.warnings %}<ul>{% for w in r.warnings %}<li class="warn">{{ w }}</li>{% endfor %}</ul>
{% else %}<p>None raised by the evaluation.</p>{% endif %}
<h2>Training</h2>
<table>{% for k, v in r.training.splits.items() %}<tr><th>{{ k }} split</th><td>{{ v.cases }} cases, {{ v.patients }}
patients</td></tr>{% endfor %}<tr><th>epochs run</th><td>{{ r.training.epochs_run }}</td></tr>
{% for k, v in r.training.settings.items() %}<tr><th>{{ k }}</th><td><code>{{ v }}</code></td></tr>{% endfor %}</table>
<h2>Reporting checklist</h2>
<p>Items in the style of CLAIM (2024) and TRIPOD+AI, with what this run can say about each.</p>
<table><tr><th>item</th><th>status</th><th>where / why</th></tr>
{% for c in r.checklist %}<tr><td>{{ c.item }}</td><td{% if c.status in ("failed", "not known") %}
class="warn"{% endif %}>{{ c.status }}</td><td>{{ c.where }}</td></tr>{% endfor %}</table>
<h2>Model card</h2>
<table>{% for k, v in r.model.items() %}<tr><th>{{ k }}</th><td><code>{{ v }}</code></td></tr>{% endfor %}</table>
<h2>Provenance</h2>
<table>{% for k, v in r.provenance.items() %}<tr><th>{{ k }}</th><td><code>{{ v }}</code></td></tr>{% endfor %}
</table>
</body></html>
"""


def write_report(
    run_dir: str | os.PathLike[str],
    *,
    split: str = "test",
    out: str | os.PathLike[str] | None = None,
    explainer: Callable[[Path], GalleryMaps] | None = None,
) -> Path:
    """Write the report page (default ``RUN/report.html``) and ``report.json`` beside it (the same
    content without the plots); returns the page's path. ``explainer``: see :func:`build_report`.

    Raises:
        InputError: the run was not evaluated on ``split``, or ``out`` cannot be written.
    """
    import jinja2

    if not Path(run_dir).is_dir():
        raise InputError(f"{run_dir} is not a run folder (it does not exist); give the folder `medsight train` wrote")
    page = Path(out) if out else Path(run_dir) / "report.html"
    check_writable(page, option="--out")
    content = build_report(run_dir, split=split, explainer=explainer)
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    html = environment.from_string(_PAGE).render(r=content, fmt=lambda block: " ".join(_with_interval(block)))
    with atomic_file(page) as tmp:
        tmp.write_text(html, encoding="utf-8")
    data = {k: v for k, v in content.items() if k not in ("plots", "gallery", "explanations")}
    data |= {"plots": [p["title"] for p in content["plots"]], "gallery": [p["title"] for p in content["gallery"]]}
    if content["explanations"]:
        shown = content["explanations"]
        data["explanations"] = {"source": shown["source"], "rows": shown["rows"],
                                "overlays": [p["title"] for p in shown["overlays"]]}  # fmt: skip
    with atomic_file(page.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(json_ready(data), indent=2, allow_nan=False))
    log.info("wrote %s (%d plots)", page, len(content["plots"]))
    return page


_INDEX = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 64rem; color: #222 }
table { border-collapse: collapse } td, th { border-bottom: 1px solid #ddd; padding: 0.25rem 0.8rem; text-align: left }
th { background: #f4f4f4 }
</style></head><body>
<h1>{{ title }}</h1>
<table><tr><th>report</th><th>headline figures [95 % CI]</th></tr>
{% for e in entries %}<tr><td><a href="{{ e.href }}">{{ e.title }}</a></td><td>{% for f in e.figures %}{{ f.name }}
{{ f.estimate }} {{ f.interval }}<br>{% endfor %}</td></tr>{% endfor %}</table>
</body></html>
"""


def write_index(page: str | os.PathLike[str], reports: list[Path], *, title: str, figures: int = 3) -> Path:
    """An index page linking report pages (relative links), each with its first ``figures`` headline
    figures (read from the ``report.json`` beside it)."""
    import jinja2

    page = Path(page)
    check_writable(page, option="the index page")
    entries = []
    for report in reports:
        summary = json.loads(Path(report).with_suffix(".json").read_text())
        href = Path(os.path.relpath(report, page.parent)).as_posix()
        entries.append({"href": href, "title": summary["title"], "figures": summary["figures"][:figures]})
    html = jinja2.Environment(autoescape=True).from_string(_INDEX).render(title=title, entries=entries)
    with atomic_file(page) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return page
