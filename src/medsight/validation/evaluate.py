"""Evaluate a trained model on a split, for any task: every figure with a 95 % CI resampled by patient.

The task computes its figures (:meth:`~medsight.tasks.base.Task.evaluate`); thresholds and
anything else fitted are chosen on the validation split and applied unchanged to the split
being evaluated (choosing them on the test split would flatter the results).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medsight.core.errors import ConfigError, InputError
from medsight.core.progress import Progress
from medsight.data.manifest import Manifest
from medsight.inference import Predictor, Uncertainty
from medsight.inference.calibration import apply_temperatures, save_temperatures
from medsight.inference.uncertainty import SPREAD_PREFIX, spread_column
from medsight.io.atomic import atomic_file, check_writable
from medsight.metrics import bootstrap_ci, delong_test, roc_auc
from medsight.metrics.calibration import fit_temperature
from medsight.metrics.referral import DEFAULT_RATES, ambiguity, referral_curve_ci
from medsight.tasks import Estimate, Evaluation, ModelPackage, Prediction, Task, task_for
from medsight.tasks.results import json_ready

__all__ = ["compare_runs", "evaluate_run"]

log = logging.getLogger(__name__)


def _with_run_splits(manifest: Manifest, run_dir: Path) -> Manifest:
    """The manifest with the splits the run was trained with (``splits.csv``), where it knows them."""
    splits_file = run_dir / "splits.csv"
    if not splits_file.is_file():
        return manifest
    splits = pd.read_csv(splits_file, dtype=str).set_index("case_id")["split"]
    table = manifest.table.copy()
    known = table["case_id"].isin(splits.index)
    table.loc[known, "split"] = table.loc[known, "case_id"].map(splits)
    return manifest.with_table(table)


def _run_config(run_dir: Path) -> dict[str, Any]:
    """The run's ``config.json`` (``{}`` for a package without one)."""
    config = run_dir / "config.json"
    try:
        return dict(json.loads(config.read_text())) if config.is_file() else {}
    except (OSError, ValueError) as exc:
        raise InputError(f"{config} is unreadable: {exc}") from exc


def _training_manifest(run_dir: Path, package: ModelPackage, config: dict[str, Any]) -> Path:
    """The manifest the run was trained on (its package's provenance, or an older run's config.json)."""
    recorded = package.provenance.manifest or config.get("manifest")
    if not recorded:
        raise InputError(f"{run_dir} does not record its training manifest; give one with --data")
    return Path(recorded)


def evaluate_run(
    run_dir: str | os.PathLike[str],
    *,
    manifest_path: str | os.PathLike[str] | None = None,
    split: str = "test",
    bootstrap: int | None = None,
    out: str | os.PathLike[str] | None = None,
    precision: str = "auto",
    progress: Progress | None = None,
    uncertainty: Uncertainty | None = None,
    temperature: bool = False,
) -> Evaluation:
    """Figures of a run on a split, with CIs.

    Writes ``out`` (default ``RUN/metrics_<split>.json``, atomically; undefined figures as
    null) and ``RUN/predictions_<split>.csv``; what the task fits on the validation split (a
    fusion temperature) is kept in the run for prediction. With ``uncertainty``, every score is the
    mean of several predictions (its spread beside it as ``sd_<column>``), and the evaluation adds
    referral curves: the AUC of each labelled probability on the cases kept when the most uncertain
    are referred, by the spread and by the probability's closeness to 0.5. With ``temperature``, a
    temperature per probability is fitted on the validation split, applied to both splits before
    any figure, and kept in the run (``temperatures.json``) for prediction; without it, any kept
    temperature is removed so that prediction matches this evaluation.

    Raises:
        ConfigError: ``temperature`` on the validation split itself, or for a task with nothing to scale.
    """
    run_dir = Path(run_dir)
    predictor = Predictor.from_run(run_dir, precision=precision)  # type: ignore[arg-type]
    target_file = Path(out) if out else run_dir / f"metrics_{split}.json"
    check_writable(target_file, option="--out")  # before the work: a bad --out must not waste it
    package = predictor.package
    config = _run_config(run_dir)
    path = Path(manifest_path) if manifest_path else _training_manifest(run_dir, package, config)
    manifest = _with_run_splits(Manifest.load(path), run_dir)
    settings = dict((config.get("recipe") or {}).get("evaluation") or {})  # bootstrap resamples, operating points
    n = settings.get("bootstrap", 1000) if bootstrap is None else bootstrap
    points = settings.get("operating_points", ["youden"])
    data = predictor.prepare(manifest, progress=progress)
    test = predictor.predict_split(data, split, uncertainty=uncertainty)
    fits = split != "val" and predictor.task.fits_on_validation
    val = predictor.predict_split(data, "val", uncertainty=uncertainty) if fits else test
    scaling = _fit_temperatures(predictor.task, val, split) if temperature else None
    if scaling:
        val = replace(val, scores=apply_temperatures(val.scores, scaling))
        test = replace(test, scores=apply_temperatures(test.scores, scaling))
    figures, details, warnings = predictor.task.evaluate(val, test, split=split, operating_points=points, bootstrap=n)
    save_temperatures(run_dir, scaling)
    if scaling:
        details["temperature_scaling"] = scaling
    if uncertainty is not None:
        details["referral"], referred = _referral(predictor.task, test.table(), uncertainty, n)
        figures = {**figures, **referred}
        if not details["referral"]["probabilities"]:
            warnings = [*warnings, "no labelled probability to draw referral curves of (the spreads are in "
                        "the predictions)"]  # fmt: skip
    predictor.task.save_fitted(details, run_dir)  # prediction on new cases reuses it
    evaluation = Evaluation(
        recipe=package.recipe,
        kind=package.task.kind,
        split=split,
        cases=int(test.cases["case_id"].nunique()) if "case_id" in test.cases else len(test),
        patients=int(test.cases["patient_id"].nunique()),
        figures=figures,
        details=details,
        warnings=tuple(warnings),
    )
    report: dict[str, Any] = {
        "run": str(run_dir),
        "recipe": package.recipe,
        "manifest": str(path.resolve()),  # the report reads cases again from it (a 3D failure gallery)
        "split": split,
        "cases": evaluation.cases,
        "patients": evaluation.patients,
        "bootstrap_resamples": n,
        "precision": predictor.precision,
        "figures": {
            name: {"estimate": e.estimate, "low": e.low, "high": e.high, "undefined": e.undefined}
            for name, e in figures.items()
        },  # the headline figures, as `medsight evaluate` prints them
        **details,
        "warnings": warnings,
    }
    with atomic_file(target_file) as tmp:  # undefined figures are written as null (NaN is not JSON)
        tmp.write_text(json.dumps(json_ready(report), indent=2, allow_nan=False))
    with atomic_file(run_dir / f"predictions_{split}.csv") as tmp:
        test.table().to_csv(tmp, index=False)
    return evaluation


def _fit_temperatures(task: Task, val: Prediction, split: str) -> dict[str, dict[str, Any]]:
    """A temperature per probability (group) of the task, fitted on the validation predictions."""
    if split == "val":
        raise ConfigError("temperature scaling is fitted on the validation split: evaluate the test split with it")
    table = val.table()
    fitted: dict[str, dict[str, Any]] = {}
    for name, columns, softmax, labels in task.calibration_groups(table):
        known = np.isfinite(labels)
        probabilities = table.loc[known, columns].to_numpy(float)
        try:
            value = fit_temperature(labels[known], probabilities if softmax else probabilities[:, 0], softmax=softmax)
        except InputError as exc:
            log.warning("no temperature for %s: %s", name, exc)
            continue
        fitted[name] = {"columns": columns, "softmax": softmax, "temperature": value}
        log.info("temperature of %s: %.3f (fitted on %d validation cases)", name, value, int(known.sum()))
    if not fitted:
        raise ConfigError(f"nothing to temperature-scale: a {task.spec.kind} task has no probabilities of that "  # type: ignore[attr-defined]
                          "kind with labels on the validation split (ordinal grades are not scaled)")  # fmt: skip
    return fitted


_REFERRAL_FIGURE = 0.2  # the share referred whose AUC is a headline figure
_REFERRAL_RESAMPLES = 400
_REFERRAL_FIGURES = 3  # probabilities given a headline figure


def _referral(
    task: Task, table: pd.DataFrame, uncertainty: Uncertainty, n: int
) -> tuple[dict[str, Any], dict[str, Estimate]]:
    """Referral curves of every binary score the task is compared by (``paired_scores``) that has a
    spread, with patient CIs, and the AUC with the most uncertain 20 % referred as headline figures."""
    patients = (table["patient_id"] if "patient_id" in table.columns else table["case_id"]).astype(str).to_numpy()
    out: dict[str, Any] = {"method": uncertainty.method, "samples": uncertainty.samples if uncertainty.method !=
                           "ensemble" else 1 + len(uncertainty.members), "rates": list(DEFAULT_RATES),
                           "probabilities": {}}  # fmt: skip
    figures: dict[str, Estimate] = {}
    resamples = min(n, _REFERRAL_RESAMPLES)
    try:
        pairs = task.paired_scores(table)
    except ConfigError:
        return out, figures
    for key, (labels, scores) in pairs.items():
        column = spread_column(key)
        if column not in table.columns:
            continue
        name = column.removeprefix(SPREAD_PREFIX)
        labels, scores = np.asarray(labels, float), np.asarray(scores, float)
        spread = pd.to_numeric(table[column], errors="coerce").to_numpy(float)
        known = np.isfinite(labels) & np.isfinite(scores) & np.isfinite(spread)
        y, p, u, groups = labels[known].astype(int), scores[known], spread[known], patients[known]
        if len(np.unique(y)) < 2:
            continue
        curves = {
            "spread": referral_curve_ci(y, p, u, groups=groups, n_resamples=resamples),
            "ambiguity": referral_curve_ci(y, p, ambiguity(p), groups=groups, n_resamples=resamples),
        }
        out["probabilities"][name] = curves
        if len(figures) < _REFERRAL_FIGURES:
            at = next(point for point in curves["spread"] if abs(point["rate"] - _REFERRAL_FIGURE) < 1e-9)
            figures[f"{name} AUC, {_REFERRAL_FIGURE:.0%} most uncertain referred"] = Estimate.of(at)
    return out, figures


def compare_runs(
    run_a: str | os.PathLike[str], run_b: str | os.PathLike[str], *, split: str = "test", bootstrap: int = 1000
) -> dict[str, Any]:
    """Compare two runs' AUCs on the same cases (their ``predictions_<split>.csv``), by patient.

    Per headline score: DeLong's test, clustered by patient as Obuchowski (1997) does where a
    patient has several cases (views, breasts, eyes, visits; plain DeLong where each has one), and
    the difference's 95 % CI from a paired bootstrap that resamples patients (both runs' scores of a
    drawn patient go together). Cases whose label is unknown for a score are left out of it.
    """
    tables = []
    for run in (Path(run_a), Path(run_b)):
        file = run / f"predictions_{split}.csv"
        if not file.is_file():
            raise InputError(f"{file} does not exist; run `medsight evaluate {run} --split {split}` first")
        tables.append(pd.read_csv(file, dtype={"case_id": str}))
    a, b = tables
    common = sorted(set(a["case_id"]) & set(b["case_id"]))
    if len(common) < 0.5 * max(len(a), len(b)):
        raise InputError(
            f"the runs were evaluated on different cases ({len(common)} in common of {len(a)} and {len(b)}): "
            "split the manifest once with `medsight data split` and train both runs on it"
        )
    if len(common) < len(a) or len(common) < len(b):
        log.warning("comparing on the %d cases both runs scored", len(common))
    a = a.set_index("case_id").loc[common].reset_index()
    b = b.set_index("case_id").loc[common].reset_index()
    task_a = ModelPackage.load(run_a).task
    task_b = ModelPackage.load(run_b).task
    if task_a != task_b:
        raise InputError("the two runs predict different tasks; DeLong compares the same scores on the same cases")
    task = task_for(task_a)
    scores_a, scores_b = task.paired_scores(a), task.paired_scores(b)
    patients = (a["patient_id"] if "patient_id" in a.columns else a["case_id"]).astype(str).to_numpy()
    tests = {}
    for name, (labels, score_a) in scores_a.items():
        known = ~np.isnan(np.asarray(labels, float))
        y, first, second = np.asarray(labels, float)[known].astype(int), score_a[known], scores_b[name][1][known]
        test = delong_test(y, first, second, clusters=patients[known])
        test["difference_ci"] = bootstrap_ci(_auc_difference, y, first, second, groups=patients[known],
                                             n_resamples=bootstrap)  # fmt: skip
        tests[name] = test
    return {"cases": len(common), "patients": len(set(patients)), "split": split, "tests": tests}


def _auc_difference(labels: np.ndarray, first: np.ndarray, second: np.ndarray) -> float:
    return roc_auc(labels, first) - roc_auc(labels, second)
