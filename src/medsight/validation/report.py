"""The validation report of a run: one self-contained HTML page (and ``report.json``) for any task.

``medsight report RUN`` reads what ``medsight evaluate`` wrote (``metrics_<split>.json``,
``predictions_<split>.csv``) and the run's model package, and lays out:

- the model card: recipe, task, network, preprocessing, provenance (versions, commit, data hash);
- the data evaluated: cases, patients, label counts, counts per subgroup attribute in the manifest;
- every headline figure with its 95 % CI (resampled by patient);
- plots, where the task's outputs allow them: ROC curves and reliability diagrams for every
  probability with a label (binary, per finding, the image scores of detection), the FROC curves
  that detection reports, per-case Dice box plots for segmentation;
- calibration (ECE, slope, intercept with CIs) and the evaluation's warnings.

Plots are drawn with matplotlib (Agg) and embedded as PNG data: the page needs no other file and
no network.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medsight.core.errors import InputError
from medsight.io.atomic import atomic_file, check_writable
from medsight.metrics.calibration import reliability_bins
from medsight.tasks import ModelPackage
from medsight.tasks.results import json_ready

__all__ = ["SUBGROUP_COLUMNS", "build_report", "write_report"]

log = logging.getLogger(__name__)

SUBGROUP_COLUMNS = ("site", "vendor", "manufacturer", "sex", "age_band", "view", "laterality", "density")
"""Manifest columns counted per value in the data summary (the subgroups a reader asks about)."""
_MAX_PLOTTED = 12  # curves per plot
_MAX_LEVELS = 20  # values listed per subgroup attribute
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


def _labelled_scores(table: pd.DataFrame) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, labels, probabilities)`` for every probability column with a 0/1 label column:
    ``prob`` with ``target``, ``prob_<name>`` with ``target_<name>``; unknown labels dropped."""
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
            pairs.append((name, labels.astype(int), scores))
    return pairs


def _walk(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Mapping[str, Any]]]:
    if isinstance(value, Mapping):
        yield path, value
        for key, item in value.items():
            yield from _walk(item, (*path, str(key)))


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _plots(metrics: Mapping[str, Any], table: pd.DataFrame) -> list[dict[str, str]]:
    """The report's figures as ``{title, caption, src}`` (PNG data URLs)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    plots = []
    pairs = _labelled_scores(table)[:_MAX_PLOTTED]
    if pairs:
        figure, axis = plt.subplots(figsize=(5.2, 4.6))
        for name, labels, scores in pairs:
            if labels.min() == labels.max():
                continue
            fpr, tpr, _ = roc_curve(labels, scores)
            axis.plot(fpr, tpr, label=name, linewidth=1.4)
        axis.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=0.8)
        axis.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01))
        axis.legend(fontsize=8, loc="lower right")
        plots.append({"title": "ROC curves", "caption": "Per probability and its label on the evaluated split "
                      "(AUCs with patient-level CIs in the figures above).", "src": _png(figure)})  # fmt: skip
        figure, axis = plt.subplots(figsize=(5.2, 4.6))
        for name, labels, scores in pairs:
            bins = reliability_bins(labels, scores)
            axis.plot(bins["mean_probability"], bins["observed"], marker="o", markersize=3, label=name, linewidth=1.2)
        axis.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=0.8)
        axis.set(xlabel="mean predicted probability", ylabel="observed share positive", xlim=(0, 1), ylim=(0, 1.01))
        axis.legend(fontsize=8, loc="upper left")
        plots.append({"title": "Reliability diagram", "caption": "Cases in ten equal-width probability bins; the "
                      "diagonal is perfect calibration.", "src": _png(figure)})  # fmt: skip
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
                      "(CT).", "src": _png(figure)})  # fmt: skip
    dice = [c for c in table.columns if c.startswith("dice_")]
    if dice:
        figure, axis = plt.subplots(figsize=(max(4.0, 1.1 * len(dice)), 4.2))
        values = [pd.to_numeric(table[c], errors="coerce").dropna().to_numpy() for c in dice]
        axis.boxplot(values, tick_labels=[c.removeprefix("dice_") for c in dice])
        axis.set(ylabel="Dice per case", ylim=(0, 1.01))
        plots.append({"title": "Dice per case", "caption": "Per region, over the evaluated cases.",
                      "src": _png(figure)})  # fmt: skip
    return plots


def _number(value: Any) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):.3f}"


def _with_interval(block: Mapping[str, Any]) -> tuple[str, str]:
    """``(estimate, "[low, high]")`` as text; an undefined figure has no interval."""
    estimate = _number(block.get("estimate"))
    return estimate, (f"[{_number(block.get('low'))}, {_number(block.get('high'))}]" if estimate != "—" else "")


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


def build_report(run_dir: str | os.PathLike[str], *, split: str = "test") -> dict[str, Any]:
    """Everything the page shows, as data (plots as PNG data URLs).

    Raises:
        InputError: the run was not evaluated on ``split`` (``medsight evaluate`` writes what is read).
    """
    run_dir = Path(run_dir)
    metrics, table, package = _load(run_dir, split)
    provenance = package.provenance
    return {
        "title": f"{package.recipe}: validation on the {split} split",
        "split": split,
        "model": {
            "recipe": package.recipe,
            "task": json_ready(package.task.model_dump()),
            "network": package.model.name,
            "input channels": package.in_channels,
            "preprocessing": json_ready(package.preprocess),
            "numeric precision in evaluation": metrics.get("precision"),
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
        "warnings": list(metrics.get("warnings") or []),
        "plots": _plots(metrics, table),
    }


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
<table><tr><th>figure</th><th>estimate</th><th>95 % CI</th><th></th></tr>
{% for f in r.figures %}<tr><td>{{ f.name }}</td><td>{{ f.estimate }}</td><td>{{ f.interval }}</td>
<td>{{ f.note }}</td></tr>{% endfor %}</table>
<h2>Data evaluated</h2>
<table><tr><th>cases</th><td>{{ r.data.cases }}</td></tr><tr><th>patients</th><td>{{ r.data.patients }}</td></tr>
{% for k, v in r.data.labels.items() %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}
{% for k, v in r.data.subgroups.items() %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</table>
{% if r.plots %}<h2>Plots</h2>
{% for p in r.plots %}<figure><img src="{{ p.src }}" alt="{{ p.title }}"><figcaption><b>{{ p.title }}.</b>
{{ p.caption }}</figcaption></figure>{% endfor %}{% endif %}
{% if r.calibration %}<h2>Calibration</h2>
<table><tr><th>probability</th><th>ECE</th><th>slope</th><th>intercept</th></tr>
{% for c in r.calibration %}<tr><td>{{ c.name }}</td><td>{{ c.ece }}</td><td>{{ c.slope }}</td>
<td>{{ c.intercept }}</td></tr>{% endfor %}</table>
<p>ECE: mean gap between observed and predicted rates over ten bins (0 ideal). Slope: 1 ideal,
below 1 the predictions are too extreme. Intercept (slope held at 1): 0 ideal, above 0 the model
predicts too low on average.</p>{% endif %}
<h2>Warnings</h2>
{% if r.warnings %}<ul>{% for w in r.warnings %}<li class="warn">{{ w }}</li>{% endfor %}</ul>
{% else %}<p>None raised by the evaluation.</p>{% endif %}
<h2>Model card</h2>
<table>{% for k, v in r.model.items() %}<tr><th>{{ k }}</th><td><code>{{ v }}</code></td></tr>{% endfor %}</table>
<h2>Provenance</h2>
<table>{% for k, v in r.provenance.items() %}<tr><th>{{ k }}</th><td><code>{{ v }}</code></td></tr>{% endfor %}
</table>
</body></html>
"""


def write_report(
    run_dir: str | os.PathLike[str], *, split: str = "test", out: str | os.PathLike[str] | None = None
) -> Path:
    """Write the report page (default ``RUN/report.html``) and ``report.json`` beside it (the same
    content without the plots); returns the page's path.

    Raises:
        InputError: the run was not evaluated on ``split``, or ``out`` cannot be written.
    """
    import jinja2

    page = Path(out) if out else Path(run_dir) / "report.html"
    check_writable(page, option="--out")
    content = build_report(run_dir, split=split)
    html = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(_PAGE).render(r=content)
    with atomic_file(page) as tmp:
        tmp.write_text(html, encoding="utf-8")
    data = {k: v for k, v in content.items() if k != "plots"} | {"plots": [p["title"] for p in content["plots"]]}
    with atomic_file(page.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(json_ready(data), indent=2, allow_nan=False))
    log.info("wrote %s (%d plots)", page, len(content["plots"]))
    return page
