"""Evaluate a trained classifier on a split: every figure with a 95 % CI resampled by patient.

Operating points are chosen on the validation split and applied unchanged to the split
being evaluated (choosing them on the test split would flatter the results).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medsight.core.errors import ConfigError, InputError
from medsight.core.progress import Progress
from medsight.data.cache import ImageCache, build_image_cache, default_cache_dir
from medsight.data.manifest import Manifest
from medsight.inference.classifier import FUSION_FILE, Classifier
from medsight.io.atomic import atomic_file
from medsight.metrics import (
    average_precision,
    bootstrap_ci,
    confusion_at,
    delong_test,
    quadratic_weighted_kappa,
    roc_auc,
    threshold_for_sensitivity,
    threshold_for_specificity,
    threshold_youden,
)
from medsight.tasks import fit_attention_temperature, fuse_views

__all__ = ["compare_runs", "evaluate_run", "predictions_of"]

log = logging.getLogger(__name__)

_POINT_METRICS = ("sensitivity", "specificity", "ppv", "npv", "accuracy", "f1")


def _threshold(spec: str, y: np.ndarray, s: np.ndarray) -> float:
    name, _, value = spec.partition(":")
    if name == "youden":
        return threshold_youden(y, s)
    if name == "sensitivity":
        return threshold_for_sensitivity(y, s, float(value))
    if name == "specificity":
        return threshold_for_specificity(y, s, float(value))
    if name == "fixed":
        return float(value)
    raise ConfigError(f"unknown operating point {spec!r}; use youden, sensitivity:X, specificity:X or fixed:T")


def _point_metric(name: str, threshold: float, y: np.ndarray, s: np.ndarray) -> float:
    return confusion_at(y, s, threshold)[name]


def _binary_report(
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    groups: np.ndarray,
    points: Sequence[str],
    n: int,
) -> dict[str, Any]:
    """AUC, AP and operating points (chosen on ``val``) on ``test``, each with a patient-level CI."""
    y, s = test
    report: dict[str, Any] = {
        "auc": bootstrap_ci(roc_auc, y, s, groups=groups, n_resamples=n),
        "average_precision": bootstrap_ci(average_precision, y, s, groups=groups, n_resamples=n),
        "prevalence": float(np.mean(y)),
        "operating_points": {},
    }
    for spec in points:
        try:
            threshold = _threshold(spec, *val)
        except InputError as exc:
            log.warning("operating point %s skipped: %s", spec, exc)
            continue
        point: dict[str, Any] = {"threshold": threshold}
        for name in _POINT_METRICS:
            point[name] = bootstrap_ci(partial(_point_metric, name, threshold), y, s, groups=groups, n_resamples=n)
        report["operating_points"][spec] = point
    return report


def predictions_of(classifier: Classifier, manifest: Manifest, split: str, cache: ImageCache) -> pd.DataFrame:
    """Case table of a split with the classifier's probabilities (``prob`` or ``prob_<class>`` columns)."""
    indices = np.flatnonzero(manifest.table["split"].to_numpy() == split)
    if len(indices) == 0:
        raise InputError(f"the manifest has no {split!r} cases")
    probs = classifier.predict_cached(cache, indices)
    table = manifest.table.iloc[indices].reset_index(drop=True).copy()
    if probs.ndim == 1:
        table["prob"] = probs
    else:
        for k, name in enumerate(classifier.task.classes):
            table[f"prob_{name}"] = probs[:, k]
    return table


def _with_run_splits(manifest: Manifest, run_dir: Path) -> Manifest:
    splits_file = run_dir / "splits.csv"
    if not splits_file.is_file():
        return manifest
    splits = pd.read_csv(splits_file, dtype=str).set_index("case_id")["split"]
    table = manifest.table.copy()
    known = table["case_id"].isin(splits.index)
    table.loc[known, "split"] = table.loc[known, "case_id"].map(splits)
    return Manifest(table, manifest.root, manifest.info)


def evaluate_run(
    run_dir: str | os.PathLike[str],
    *,
    manifest_path: str | os.PathLike[str] | None = None,
    split: str = "test",
    bootstrap: int | None = None,
    out: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Metrics of a run on a split, with CIs; written to ``out`` (default ``RUN/metrics_<split>.json``)."""
    run_dir = Path(run_dir)
    classifier = Classifier.from_run(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    path = Path(manifest_path or config.get("manifest", ""))
    manifest = _with_run_splits(Manifest.load(path), run_dir)
    recipe = classifier.recipe
    n = recipe["evaluation"]["bootstrap"] if bootstrap is None else bootstrap
    points = recipe["evaluation"]["operating_points"]
    folder = default_cache_dir(manifest, recipe["name"])
    cache = build_image_cache(manifest, classifier.preprocess, folder, progress=progress)
    test = predictions_of(classifier, manifest, split, cache)
    val = predictions_of(classifier, manifest, "val", cache) if split != "val" else test
    groups = test["patient_id"].to_numpy()
    kind, classes = recipe["task"]["kind"], recipe["task"]["classes"]
    report: dict[str, Any] = {
        "run": str(run_dir),
        "recipe": recipe["name"],
        "split": split,
        "cases": len(test),
        "patients": int(test["patient_id"].nunique()),
        "bootstrap_resamples": n,
    }
    target = recipe["task"]["target"]
    if kind == "binary":
        val_scores = (val[target].to_numpy(int), val["prob"].to_numpy())
        test_scores = (test[target].to_numpy(int), test["prob"].to_numpy())
        report["metrics"] = _binary_report(val_scores, test_scores, groups, points, n)
        if recipe["task"].get("fusion"):
            report["fused"], report["fusion"] = _fused(val, test, target, recipe["task"]["fusion"], n)
            # prediction on new exams fuses their views the same way (the temperature is fitted here)
            (run_dir / FUSION_FILE).write_text(json.dumps(report["fusion"]))
    elif kind == "ordinal":
        report.update(_ordinal_report(val, test, recipe, groups, points, n))
    elif kind == "multilabel":
        report.update(_multilabel_report(val, test, classes, groups, points, n))
    else:
        probs = test[[f"prob_{c}" for c in classes]].to_numpy()
        y = test[target].to_numpy(int)
        report["metrics"] = {
            "accuracy": _accuracy_ci(y, probs, groups, n),
            "macro_auc": bootstrap_ci(_macro_auc, np.eye(len(classes))[y], probs, groups=groups, n_resamples=n),
        }
    report["warnings"] = _class_warnings(test, recipe, split)
    target_file = Path(out) if out else run_dir / f"metrics_{split}.json"
    with atomic_file(target_file) as tmp:  # undefined figures are written as null (NaN is not JSON)
        tmp.write_text(json.dumps(_json_ready(report), indent=2, allow_nan=False))
    test.to_csv(run_dir / f"predictions_{split}.csv", index=False)
    return report


def _class_warnings(test: pd.DataFrame, recipe: dict[str, Any], split: str) -> list[str]:
    """What makes the split's figures meaningless: a class (or finding state) it lacks."""
    task = recipe["task"]
    columns = (
        {name: f"target_{name}" for name in task["classes"]} if task["kind"] == "multilabel" else {"": task["target"]}
    )
    warnings = []
    for name, column in columns.items():
        seen = sorted(test[column].dropna().unique().tolist())
        if len(seen) < 2:
            what = f"finding {name!r}" if name else "the target"
            warnings.append(
                f"the {split} split holds only {seen or 'unknown'} for {what}: AUC, kappa and sensitivity/"
                "specificity are undefined there, and accuracy says nothing about telling classes apart"
            )
    for message in warnings:
        log.warning(message)
    return warnings


def _json_ready(value: Any) -> Any:
    """The report with NaN and infinite figures as ``None`` (JSON null: undefined)."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _qwk(grades: np.ndarray, probs: np.ndarray, n_classes: int) -> float:
    return quadratic_weighted_kappa(grades, probs.argmax(1), n_classes=n_classes)


def _accuracy_ci(labels: np.ndarray, probs: np.ndarray, groups: np.ndarray, n: int) -> dict[str, Any]:
    """Accuracy with its CI; undefined on a split of one class, where it says nothing (a model that
    always answers that class scores 1.000 while kappa and AUC are undefined)."""
    if len(np.unique(labels)) < 2:
        nan = float("nan")
        reason = "the split holds one class only"
        return {"estimate": nan, "low": nan, "high": nan, "n_valid": 0, "n_undefined": n, "undefined": reason}
    return bootstrap_ci(_accuracy, labels, probs, groups=groups, n_resamples=n)


def _accuracy(labels: np.ndarray, probs: np.ndarray) -> float:
    return float(np.mean(labels == probs.argmax(1)))


def _ordinal_report(
    val: pd.DataFrame, test: pd.DataFrame, recipe: dict[str, Any], groups: np.ndarray, points: Sequence[str], n: int
) -> dict[str, Any]:
    classes, target = recipe["task"]["classes"], recipe["task"]["target"]
    probs = test[[f"prob_{c}" for c in classes]].to_numpy()
    grades = test[target].to_numpy(int)
    report: dict[str, Any] = {
        "metrics": {
            "qwk": bootstrap_ci(partial(_qwk, n_classes=len(classes)), grades, probs, groups=groups, n_resamples=n),
            "accuracy": _accuracy_ci(grades, probs, groups, n),
        }
    }
    g = recipe["task"].get("referable_grade")
    if g is not None:
        val_probs = val[[f"prob_{c}" for c in classes]].to_numpy()
        val_scores = ((val[target].to_numpy(int) >= g).astype(int), val_probs[:, g:].sum(1))
        test_scores = ((grades >= g).astype(int), probs[:, g:].sum(1))
        report["referable"] = {"grade": g, **_binary_report(val_scores, test_scores, groups, points, n)}
    return report


def _multilabel_report(
    val: pd.DataFrame, test: pd.DataFrame, classes: Sequence[str], groups: np.ndarray, points: Sequence[str], n: int
) -> dict[str, Any]:
    findings: dict[str, Any] = {}
    for name in classes:
        known_v, known_t = val[f"target_{name}"].notna(), test[f"target_{name}"].notna()
        if not known_t.any():  # e.g. a CheXpert finding left blank for every test case
            findings[name] = {"known_cases": 0, "undefined": "no case of the split has a known label"}
            log.warning("finding %r: no case of the split has a known label; its metrics are undefined", name)
            continue
        val_scores = (val.loc[known_v, f"target_{name}"].to_numpy(int), val.loc[known_v, f"prob_{name}"].to_numpy())
        test_scores = (test.loc[known_t, f"target_{name}"].to_numpy(int), test.loc[known_t, f"prob_{name}"].to_numpy())
        findings[name] = {
            "known_cases": int(known_t.sum()),
            **_binary_report(val_scores, test_scores, groups[known_t.to_numpy()], points, n),
        }
    labels = test[[f"target_{c}" for c in classes]].to_numpy(float)
    scores = test[[f"prob_{c}" for c in classes]].to_numpy()
    macro = bootstrap_ci(_macro_auc, labels, scores, groups=groups, n_resamples=n)
    return {"findings": findings, "metrics": {"macro_auc": macro}}


def _macro_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    aucs = []
    for k in range(labels.shape[1]):
        known = ~np.isnan(labels[:, k])
        aucs.append(roc_auc(labels[known, k].astype(int), scores[known, k]) if known.any() else float("nan"))
    finite = [a for a in aucs if not np.isnan(a)]
    return float(np.mean(finite)) if finite else float("nan")


def _fused(
    val: pd.DataFrame, test: pd.DataFrame, target: str, method: str, n: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Breast- and exam-level AUCs, and how the views were fused (method, fitted temperature)."""
    needed = {"study_id", "laterality"}
    if not needed <= set(test.columns):
        log.warning("no study_id/laterality columns: view fusion skipped")
        return {}, {"method": method}
    fitted: dict[str, Any] = {}
    if method == "attention":  # the temperature is chosen on the validation split, never on test
        fitted["temperature"] = fit_attention_temperature(val, "prob", target)
    breasts, exams = fuse_views(test, "prob", method=method, target=target, **fitted)  # type: ignore[arg-type]
    breast_auc = bootstrap_ci(
        roc_auc, breasts[target].to_numpy(int), breasts["prob"].to_numpy(), groups=breasts["study_id"], n_resamples=n
    )
    exam_auc = bootstrap_ci(roc_auc, exams[target].to_numpy(int), exams["prob"].to_numpy(), n_resamples=n)
    fused = {"breast": {"auc": breast_auc, "count": len(breasts)}, "exam": {"auc": exam_auc, "count": len(exams)}}
    return fused, {"method": method, **fitted}


def _headline_scores(table: pd.DataFrame, recipe: dict[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The binary scores DeLong compares: the score, the referable score, or each finding."""
    task, target = recipe["task"], recipe["task"]["target"]
    if task["kind"] == "binary":
        return {"auc": (table[target].to_numpy(int), table["prob"].to_numpy())}
    if task["kind"] == "ordinal" and task.get("referable_grade") is not None:
        g = task["referable_grade"]
        probs = table[[f"prob_{c}" for c in task["classes"]]].to_numpy()
        return {"referable_auc": ((table[target].to_numpy(int) >= g).astype(int), probs[:, g:].sum(1))}
    if task["kind"] == "multilabel":
        out = {}
        for name in task["classes"]:
            known = table[f"target_{name}"].notna()
            out[f"auc_{name}"] = (
                table.loc[known, f"target_{name}"].to_numpy(int),
                table.loc[known, f"prob_{name}"].to_numpy(),
            )
        return out
    raise ConfigError(f"DeLong compares binary scores; a {task['kind']} task without a referable grade has none")


def compare_runs(
    run_a: str | os.PathLike[str], run_b: str | os.PathLike[str], *, split: str = "test"
) -> dict[str, Any]:
    """DeLong's test between two runs on the same cases (their ``predictions_<split>.csv``)."""
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
    recipe_a = json.loads((Path(run_a) / "config.json").read_text())["recipe"]
    recipe_b = json.loads((Path(run_b) / "config.json").read_text())["recipe"]
    if recipe_a["task"] != recipe_b["task"]:
        raise InputError("the two runs predict different tasks; DeLong compares the same scores on the same cases")
    scores_a, scores_b = _headline_scores(a, recipe_a), _headline_scores(b, recipe_b)
    return {
        "cases": len(common),
        "split": split,
        "tests": {name: delong_test(y, scores_a[name][1], scores_b[name][1]) for name, (y, _) in scores_a.items()},
    }
