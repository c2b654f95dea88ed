"""The figures of a classification task on a split, each with a 95 % CI resampled by patient.

Operating points are chosen on the validation split and applied unchanged to the split
being evaluated (choosing them on the test split would flatter the results); so is the
attention temperature that fuses mammography views into breasts and exams.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from medsight.core.errors import ConfigError, InputError
from medsight.data.manifest import parse_boxes
from medsight.io.atomic import atomic_file
from medsight.metrics import (
    average_precision,
    bootstrap_ci,
    confusion_at,
    quadratic_weighted_kappa,
    roc_auc,
    threshold_for_sensitivity,
    threshold_for_specificity,
    threshold_youden,
)
from medsight.metrics.bootstrap import bootstrap_cis
from medsight.metrics.calibration import calibration_figures, reliability_bins
from medsight.metrics.detection import box_iou
from medsight.tasks.fusion import fit_attention_temperature, fuse_views
from medsight.tasks.results import Estimate

if TYPE_CHECKING:
    from medsight.tasks.classification import ClassificationTask

__all__ = ["FUSION_FILE", "evaluate", "fitted_fusion", "fuse", "paired_scores", "save_fusion"]

log = logging.getLogger(__name__)

FUSION_FILE = "fusion.json"  # how `medsight evaluate` fused views (method, fitted temperature)
CAM_IOU = 0.3  # a class activation map's box localises a finding when it overlaps its true box this much


def evaluate(
    task: ClassificationTask, val: pd.DataFrame, test: pd.DataFrame, *, split: str, points: Sequence[str], n: int
) -> tuple[dict[str, Estimate], dict[str, Any], list[str]]:
    """Headline figures, the full detail (``metrics_<split>.json``'s layout) and warnings of
    ``test``, whose thresholds (and fusion temperature) are chosen on ``val``.

    Both tables hold the manifest columns (``patient_id``, targets) and the task's score
    columns (``prob`` or ``prob_<class>``).
    """
    groups = test["patient_id"].to_numpy()
    classes, target = list(task.classes), task.target
    details: dict[str, Any] = {}
    if task.kind == "binary":
        val_scores = (val[target].to_numpy(int), val["prob"].to_numpy())
        test_scores = (test[target].to_numpy(int), test["prob"].to_numpy())
        details["metrics"] = _binary_report(val_scores, test_scores, groups, points, n)
        if task.fusion:
            details["fused"], details["fusion"] = _fused(val, test, target, task.fusion, n)
    elif task.kind == "ordinal":
        details.update(_ordinal_report(val, test, task, groups, points, n))
    elif task.kind == "multilabel":
        details.update(_multilabel_report(val, test, classes, groups, points, n))
    else:
        probs = test[[f"prob_{c}" for c in classes]].to_numpy()
        y = test[target].to_numpy(int)
        details["metrics"] = {
            "accuracy": _accuracy_ci(y, probs, groups, n),
            "macro_auc": bootstrap_ci(_macro_auc, np.eye(len(classes))[y], probs, groups=groups, n_resamples=n),
        }
    warnings = _class_warnings(test, task, split)
    return _figures(details), details, warnings


def _figures(details: dict[str, Any]) -> dict[str, Estimate]:
    """The headline figures of a report, flat and named: ``qwk``, ``referable auc``,
    ``sensitivity @ youden``, ``exam auc``, ``auc <finding>``..."""
    figures = {k.replace("_", " "): Estimate.of(v) for k, v in details.get("metrics", {}).items()
               if isinstance(v, dict) and "estimate" in v}  # fmt: skip
    for block, label in ((details.get("referable"), "referable "), (details.get("metrics"), "")):
        if not block or "operating_points" not in block:
            continue
        if label:
            figures[f"{label}auc"] = Estimate.of(block["auc"])
        for spec, point in block["operating_points"].items():
            for name in ("sensitivity", "specificity"):
                figures[f"{label}{name} @ {spec}"] = Estimate.of(point[name])
    for level, block in details.get("fused", {}).items():
        figures[f"{level} auc"] = Estimate.of(block["auc"])
    for name, finding in details.get("findings", {}).items():
        undefined = {"estimate": None, "low": None, "high": None, "undefined": finding.get("undefined")}
        figures[f"auc {name}"] = Estimate.of(finding.get("auc", undefined))
    if "hit_rate" in details.get("localisation", {}):
        figures[f"cam boxes hit @ IoU {CAM_IOU:g}"] = Estimate.of(details["localisation"]["hit_rate"])
        figures["cam peak in box"] = Estimate.of(details["localisation"]["pointing"])
    return figures


def save_fusion(details: dict[str, Any], run_dir: Path) -> None:
    """Keep how views were fused (and the temperature fitted on val) for prediction on new exams."""
    if "fusion" in details:
        with atomic_file(run_dir / FUSION_FILE) as tmp:
            tmp.write_text(json.dumps(details["fusion"]))


def fitted_fusion(run_dir: Path) -> dict[str, Any]:
    """The fusion settings :func:`save_fusion` kept in ``run_dir`` (``{}`` when none)."""
    path = Path(run_dir) / FUSION_FILE
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is unreadable ({exc}); run `medsight evaluate {run_dir}` again") from exc


def fuse(task: ClassificationTask, table: pd.DataFrame, fitted: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """Breast- and exam-level scores of per-image predictions, fused as the recipe says (attention
    with the temperature fitted on the validation split); ``{}`` when the recipe fuses nothing.

    Raises:
        InputError: the images do not say their study and laterality (DICOM headers).
        ConfigError: attention fusion before ``medsight evaluate`` fitted its temperature.
    """
    if not task.fusion:
        return {}
    missing = [c for c in ("study_id", "laterality") if c not in table or table[c].isna().any()]
    if missing:
        raise InputError(
            f"cannot fuse views into breasts and exams: {missing} unknown for some images "
            "(DICOM StudyInstanceUID and ImageLaterality); per-image predictions are still written"
        )
    options: dict[str, Any] = {}
    if task.fusion == "attention":
        if "temperature" not in fitted:
            raise ConfigError(
                "attention fusion uses the temperature `medsight evaluate RUN` fits on the validation split; "
                "run it first (per-image predictions are still written)"
            )
        options["temperature"] = float(fitted["temperature"])
    breasts, exams = fuse_views(table, "prob", method=task.fusion, **options)
    return {"breasts": breasts, "exams": exams}


def paired_scores(task: ClassificationTask, table: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The binary scores DeLong compares, row for row with ``table``: the score, the referable
    score, or each finding (labels NaN where unknown)."""
    target = task.target
    if task.kind == "binary":
        return {"auc": (table[target].to_numpy(int), table["prob"].to_numpy())}
    if task.kind == "ordinal" and task.referable_grade is not None:
        g = task.referable_grade
        probs = table[[f"prob_{c}" for c in task.classes]].to_numpy()
        return {"referable_auc": ((table[target].to_numpy(int) >= g).astype(int), probs[:, g:].sum(1))}
    if task.kind == "multilabel":  # unknown labels stay NaN, row for row: the caller leaves them out
        return {f"auc_{name}": (table[f"target_{name}"].to_numpy(float), table[f"prob_{name}"].to_numpy())
                for name in task.classes}  # fmt: skip
    raise ConfigError(f"DeLong compares binary scores; a {task.kind} task without a referable grade has none")


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
    """AUC, AP, operating points (chosen on ``val``) and calibration (ECE, slope, intercept; the
    reliability diagram's bins) on ``test``, each with a patient-level CI."""
    y, s = test
    report: dict[str, Any] = {
        "auc": bootstrap_ci(roc_auc, y, s, groups=groups, n_resamples=n),
        "average_precision": bootstrap_ci(average_precision, y, s, groups=groups, n_resamples=n),
        "prevalence": float(np.mean(y)),
        "operating_points": {},
    }
    if len(s) and np.all((s >= 0) & (s <= 1)):  # calibration is a property of probabilities
        ece, slope, intercept = bootstrap_cis(calibration_figures, y, s, names=["ece", "slope", "intercept"],
                                              groups=groups, n_resamples=n)  # fmt: skip
        report["calibration"] = {"ece": ece, "slope": slope, "intercept": intercept, "bins": reliability_bins(y, s)}
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


def _class_warnings(test: pd.DataFrame, task: ClassificationTask, split: str) -> list[str]:
    """What makes the split's figures meaningless: a class (or finding state) it lacks."""
    columns = {name: f"target_{name}" for name in task.classes} if task.kind == "multilabel" else {"": task.target}
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
    val: pd.DataFrame, test: pd.DataFrame, task: ClassificationTask, groups: np.ndarray, points: Sequence[str], n: int
) -> dict[str, Any]:
    classes, target = task.classes, task.target
    probs = test[[f"prob_{c}" for c in classes]].to_numpy()
    grades = test[target].to_numpy(int)
    report: dict[str, Any] = {
        "metrics": {
            "qwk": bootstrap_ci(partial(_qwk, n_classes=len(classes)), grades, probs, groups=groups, n_resamples=n),
            "accuracy": _accuracy_ci(grades, probs, groups, n),
        }
    }
    g = task.referable_grade
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
    out = {"findings": findings, "metrics": {"macro_auc": macro}}
    if "cam_boxes" in test.columns and "boxes" in test.columns:
        out["localisation"] = _cam_localisation(test, classes, groups, n)
    return out


def _cam_localisation(test: pd.DataFrame, classes: Sequence[str], groups: np.ndarray, n: int) -> dict[str, Any]:
    """How well class activation maps localise findings, over every true box whose label names one of
    ``classes`` (case-insensitively): the share whose finding's CAM box overlaps it with IoU >=
    ``CAM_IOU``, and the share holding the map's peak (the pointing game); overall and per finding."""
    by_name = {c.lower(): c for c in classes}
    rows: list[tuple[str, float, float, Any]] = []
    for case, cell, boxes, patient in zip(test["case_id"], test["cam_boxes"], test["boxes"], groups, strict=True):
        if not isinstance(cell, str) or not cell:
            continue
        cams = json.loads(cell)
        for box in parse_boxes(boxes, str(case)):
            name = by_name.get(str(box.get("label", "")).lower())
            if name is None or name not in cams:
                continue
            x0, y0, x1, y1 = box["x"], box["y"], box["x"] + box["w"], box["y"] + box["h"]
            overlap = box_iou(np.array([cams[name]["box"]], float), np.array([[x0, y0, x1, y1]], float))[0, 0]
            x, y = cams[name]["peak"]
            rows.append((name, float(overlap >= CAM_IOU), float(x0 <= x <= x1 and y0 <= y <= y1), patient))
    if not rows:
        return {"iou": CAM_IOU, "undefined": "no box of the split names one of the findings"}
    names = np.array([r[0] for r in rows])
    hit, pointed, group = (np.array([r[k] for r in rows]) for k in (1, 2, 3))

    def rates(mask: np.ndarray) -> dict[str, Any]:
        return {"boxes": int(mask.sum()),
                "hit_rate": bootstrap_ci(np.mean, hit[mask], groups=group[mask], n_resamples=n),
                "pointing": bootstrap_ci(np.mean, pointed[mask], groups=group[mask], n_resamples=n)}  # fmt: skip

    per = {name: rates(names == name) for name in classes if (names == name).any()}
    return {"iou": CAM_IOU, **rates(np.ones(len(rows), bool)), "findings": per}


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
    # CIs resample patients: a woman's exams (screening rounds) and breasts are correlated
    patient_of = test.groupby("study_id")["patient_id"].first()
    breast_auc = bootstrap_ci(roc_auc, breasts[target].to_numpy(int), breasts["prob"].to_numpy(),
                              groups=breasts["study_id"].map(patient_of).to_numpy(), n_resamples=n)  # fmt: skip
    exam_auc = bootstrap_ci(roc_auc, exams[target].to_numpy(int), exams["prob"].to_numpy(),
                            groups=exams["study_id"].map(patient_of).to_numpy(), n_resamples=n)  # fmt: skip
    fused = {"breast": {"auc": breast_auc, "count": len(breasts)}, "exam": {"auc": exam_auc, "count": len(exams)}}
    return fused, {"method": method, **fitted}
