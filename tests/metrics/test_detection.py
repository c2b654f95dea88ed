"""Detection metrics against hand-computed cases, a loop-by-loop reference of the LUNA16 script's
logic (with scikit-learn's ROC curve, as the script uses) and pycocotools' COCO AP."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_curve

from medsight.core.errors import InputError
from medsight.metrics.bootstrap import bootstrap_ci, bootstrap_cis
from medsight.metrics.detection import (
    EXCLUDED_DIAMETER_MM,
    LUNA16_RATES,
    average_precision_boxes,
    box_iou,
    box_matches,
    cpm,
    excluded_diameters,
    froc_curve,
    froc_summary,
    label_candidates,
    match_boxes,
    match_nodules,
    mean_average_precision,
    nodule_sizes,
    sensitivity_at,
    size_summary,
    top_box_hits,
)

COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ"]


def _frame(rows, last):
    return pd.DataFrame(rows, columns=[*COLUMNS, last])


def test_an_excluded_finding_of_unknown_size_is_taken_as_luna16s_10_mm_and_known_sizes_are_kept():
    """The LUNA16 script's rule (``if diameter < 0: diameter = 10``), the one rule training, the second
    stage and evaluation read excluded findings by."""
    assert EXCLUDED_DIAMETER_MM == 10.0
    np.testing.assert_array_equal(excluded_diameters(np.array([-1.0, -5.0, 0.0, 4.5, 30.0])), [10, 10, 0, 4.5, 30])
    assert excluded_diameters(np.array([])).shape == (0,)


def test_candidates_are_labelled_by_strict_distance_and_excluded_findings_by_luna16s_sizes():
    """The one labelling that scoring (``match_nodules``) and the second stage's fit share: a
    candidate hits every nodule whose radius it lies strictly within; an excluded finding of
    unknown size (-1) covers 5 mm around it."""
    points = np.array([[0.0, 0, 0], [4.9, 0, 0], [5.0, 0, 0], [100, 4.9, 0], [100, 5.0, 0], [2, 0, 0]])
    nodules, sizes = np.array([[0.0, 0, 0], [3.0, 0, 0]]), np.array([10.0, 4.0])
    hits, on_excluded = label_candidates(points, nodules, sizes, np.array([[100.0, 0, 0]]), np.array([-1.0]))
    expected = [[True, False], [True, True], [False, False], [False, False], [False, False], [True, True]]
    np.testing.assert_array_equal(hits, expected)
    np.testing.assert_array_equal(on_excluded, [False, False, False, True, False, False])
    hits, on_excluded = label_candidates(points, nodules[:0], sizes[:0], nodules[:0], sizes[:0])
    assert hits.shape == (6, 0) and not on_excluded.any()
    hits, on_excluded = label_candidates(points[:0], nodules, sizes, nodules[:1], np.array([6.5]))
    assert hits.shape == (0, 2) and on_excluded.shape == (0,)


def _hand_case():
    annotations = _frame([["A", 0, 0, 0, 10], ["A", 50, 0, 0, 6], ["B", 0, 0, 0, 8]], "diameter_mm")
    excluded = _frame([["A", 100, 0, 0, -1]], "diameter_mm")
    candidates = _frame(
        [
            ["A", 1, 0, 0, 0.9],  # hits the 10 mm nodule
            ["A", 2, 0, 0, 0.5],  # a second hit on it: a duplicate
            ["A", 100, 2, 0, 0.8],  # on the excluded finding (-1 -> 10 mm): ignored
            ["A", 200, 0, 0, 0.7],  # false positive
            ["A", 53.5, 0, 0, 0.3],  # 3.5 mm from the 6 mm nodule: outside, false positive
            ["A", 53, 0, 0, 0.2],  # exactly on its radius: outside (strict), false positive
            ["B", 0, 3, 0, 0.6],  # 3 mm from the 8 mm nodule: hit
            ["B", 10, 10, 10, 0.95],  # false positive
        ],
        "probability",
    )
    return candidates, annotations, excluded


def test_hand_computed_froc_and_cpm():
    candidates, annotations, excluded = _hand_case()
    entries = match_nodules(candidates, annotations, excluded, scans=["A", "B", "C"])
    assert (entries.scans, entries.findings, entries.detected, entries.false_positives) == (3, 3, 2, 4)
    assert (entries.ignored, entries.duplicates, entries.dropped) == (1, 1, 0)
    fps, sens, thresholds = froc_curve(entries.kind, entries.probability)
    third = 1 / 3
    np.testing.assert_allclose(fps, [0, third, third, 2 * third, 2 * third, 1, 4 * third])
    np.testing.assert_allclose(sens, [0, 0, third, third, 2 * third, 2 * third, 2 * third])
    np.testing.assert_allclose(thresholds[1:], [0.95, 0.9, 0.7, 0.6, 0.3, 0.2])
    at = sensitivity_at(fps, sens, LUNA16_RATES)
    np.testing.assert_allclose(at, [0, 0, third, 2 * third, 2 * third, 2 * third, 2 * third])
    assert cpm(entries.kind, entries.probability) == pytest.approx(3 / 7)


def test_scans_without_findings_lower_the_false_positive_rate():
    candidates, annotations, excluded = _hand_case()
    two = match_nodules(candidates, annotations, excluded, scans=["A", "B"])
    six = match_nodules(candidates, annotations, excluded, scans=["A", "B", "C", "D", "E", "F"])
    assert froc_curve(two.kind, two.probability)[0][-1] == pytest.approx(2.0)
    assert froc_curve(six.kind, six.probability)[0][-1] == pytest.approx(4 / 6)
    # default scans: those with candidates or nodules (here A and B)
    default = match_nodules(candidates, annotations, excluded)
    assert default.scans == 2


def test_one_candidate_inside_two_nodules_hits_both():
    annotations = _frame([["A", 0, 0, 0, 10], ["A", 4, 0, 0, 10]], "diameter_mm")
    candidates = _frame([["A", 2, 0, 0, 0.8]], "probability")
    entries = match_nodules(candidates, annotations)
    assert entries.detected == 2 and entries.false_positives == 0
    fps, _, _ = froc_curve(entries.kind, entries.probability)
    np.testing.assert_allclose(fps, 0)  # a system without false positives
    assert cpm(entries.kind, entries.probability) == pytest.approx(1.0)


def test_edge_cases_no_nodules_no_candidates_nothing_detected():
    annotations = _frame([["A", 0, 0, 0, 10]], "diameter_mm")
    none_found = _frame([["A", 90, 0, 0, 0.9], ["B", 0, 0, 0, 0.4]], "probability")
    missed = match_nodules(none_found, annotations)
    assert missed.detected == 0 and cpm(missed.kind, missed.probability) == 0.0
    empty = match_nodules(_frame([], "probability"), annotations)
    assert cpm(empty.kind, empty.probability) == 0.0
    no_nodules = match_nodules(none_found, _frame([], "diameter_mm"))
    assert math.isnan(cpm(no_nodules.kind, no_nodules.probability))
    summary = froc_summary(no_nodules, bootstrap=20)
    assert "undefined" in summary and math.isnan(summary["cpm"]["estimate"])


def test_marks_beyond_the_per_scan_limit_are_dropped_as_the_script_does():
    annotations = _frame([["A", 0, 0, 0, 10]], "diameter_mm")
    rows = [["A", 500 + i, 0, 0, 0.5] for i in range(99)] + [["A", 1, 0, 0, 0.5], ["A", 0, 0, 0, 0.1]]
    rows += [["A", 900, 0, 0, 0.9]]
    entries = match_nodules(_frame(rows, "probability"), annotations, max_marks=100)
    # 102 marks: the 101st highest probability is 0.5, so only the 0.9 mark stays
    assert entries.dropped == 101 and entries.false_positives == 1 and entries.detected == 0
    every = match_nodules(_frame(rows, "probability"), annotations, max_marks=0)
    assert every.dropped == 0 and every.detected == 1


def test_bad_tables_are_named():
    annotations = _frame([["A", 0, 0, 0, 10]], "diameter_mm")
    with pytest.raises(InputError, match="probability of row 2"):
        match_nodules(_frame([["A", 0, 0, 0, 0.5], ["A", 1, 1, 1, float("nan")]], "probability"), annotations)
    with pytest.raises(InputError, match="lacks the column"):
        match_nodules(pd.DataFrame({"seriesuid": ["A"], "x": [0]}), annotations)
    with pytest.raises(InputError, match="not a finite number"):
        match_nodules(_frame([["A", "abc", 0, 0, 0.5]], "probability"), annotations)


# --- the LUNA16 script's logic, written loop by loop as the script does, for random cases -----------


def _script_froc(candidates, annotations, excluded, scans, max_marks=100):
    gt, prob, exclude = [], [], []
    for scan in scans:
        marks = {i: r for i, r in enumerate(candidates[candidates.seriesuid == scan].itertuples())}
        if max_marks > 0 and len(marks) > max_marks:
            probs = sorted((float(m.probability) for m in marks.values()), reverse=True)
            cut = probs[max_marks]
            marks = {k: m for k, m in marks.items() if float(m.probability) > cut}
        remaining = dict(marks)
        findings = [(r, "Included") for r in annotations[annotations.seriesuid == scan].itertuples()]
        findings += [(r, "Excluded") for r in excluded[excluded.seriesuid == scan].itertuples()]
        for nodule, state in findings:
            diameter = float(nodule.diameter_mm)
            if diameter < 0:
                diameter = 10.0
            found = []
            for key, mark in marks.items():
                distance = (
                    (nodule.coordX - mark.coordX) ** 2 + (nodule.coordY - mark.coordY) ** 2
                    + (nodule.coordZ - mark.coordZ) ** 2
                )  # fmt: skip
                if distance < (diameter / 2) ** 2:
                    if state == "Included":
                        found.append(mark)
                        remaining.pop(key, None)
                    else:
                        remaining.pop(key, None)
            if state == "Included":
                gt.append(1.0)
                prob.append(max(float(m.probability) for m in found) if found else -1e9)
                exclude.append(not found)
        for mark in remaining.values():
            gt.append(0.0)
            prob.append(float(mark.probability))
            exclude.append(False)
    gt, prob, exclude = np.array(gt), np.array(prob), np.array(exclude)
    kept_gt, kept_prob = gt[~exclude], prob[~exclude]
    detected, total = kept_gt.sum(), gt.sum()
    if kept_gt.sum() == 0 or kept_gt.sum() == len(kept_gt):  # what the script would return as NaN or zeros
        return None
    fpr, tpr, _ = roc_curve(kept_gt, kept_prob)
    fps = fpr * (len(kept_prob) - detected) / len(scans)
    sens = tpr * detected / total
    return np.interp(LUNA16_RATES, fps, sens)


def _random_case(rng, n_scans):
    scans = [f"1.2.{i}" for i in range(n_scans)]
    annotations, excluded, candidates = [], [], []
    for scan in scans:
        for _ in range(rng.integers(0, 4)):
            centre = rng.uniform(-150, 150, 3)
            annotations.append([scan, *centre, rng.uniform(3, 30)])
            for _ in range(rng.integers(0, 3)):  # marks near it, some inside
                candidates.append([scan, *(centre + rng.normal(0, 5, 3)), rng.random()])
        for _ in range(rng.integers(0, 2)):
            centre = rng.uniform(-150, 150, 3)
            excluded.append([scan, *centre, rng.choice([-1.0, rng.uniform(1, 3)])])
            candidates.append([scan, *(centre + rng.normal(0, 2, 3)), rng.random()])
        for _ in range(rng.integers(0, 8)):
            candidates.append([scan, *rng.uniform(-150, 150, 3), round(rng.random(), 1)])  # ties too
    return (_frame(candidates, "probability"), _frame(annotations, "diameter_mm"), _frame(excluded, "diameter_mm"),
            scans)  # fmt: skip


@pytest.mark.parametrize("seed", range(12))
def test_matches_the_luna16_script_logic_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    candidates, annotations, excluded, scans = _random_case(rng, int(rng.integers(2, 12)))
    max_marks = int(rng.choice([100, 3]))
    reference = _script_froc(candidates, annotations, excluded, scans, max_marks)
    entries = match_nodules(candidates, annotations, excluded, scans=scans, max_marks=max_marks)
    if reference is None:
        pytest.skip("a degenerate draw (nothing detected or no false positive) the script cannot score")
    fps, sens, _ = froc_curve(entries.kind, entries.probability)
    np.testing.assert_allclose(sensitivity_at(fps, sens, LUNA16_RATES), reference, atol=1e-12)
    assert cpm(entries.kind, entries.probability) == pytest.approx(float(np.mean(reference)), abs=1e-12)


def _script_sizes(candidates, annotations, scans, max_marks=100):
    """Per nodule, loop by loop: (scan, annotated, predicted diameter) of its most probable hit among
    the counted marks (the first such mark on a tie in probability)."""
    out = []
    for scan in scans:
        marks = list(candidates[candidates.seriesuid == scan].itertuples())
        if max_marks > 0 and len(marks) > max_marks:
            cut = sorted((m.probability for m in marks), reverse=True)[max_marks]
            marks = [m for m in marks if m.probability > cut]
        for nodule in annotations[annotations.seriesuid == scan].itertuples():
            best = None
            for mark in marks:
                distance = math.dist((nodule.coordX, nodule.coordY, nodule.coordZ),
                                     (mark.coordX, mark.coordY, mark.coordZ))  # fmt: skip
                if distance < nodule.diameter_mm / 2 and (best is None or mark.probability > best.probability):
                    best = mark
            if best is not None:
                out.append((scan, nodule.diameter_mm, best.diameter_mm))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_nodule_sizes_match_a_loop_by_loop_reference(seed):
    rng = np.random.default_rng(seed)
    candidates, annotations, excluded, scans = _random_case(rng, int(rng.integers(2, 12)))
    candidates["diameter_mm"] = rng.uniform(2, 35, len(candidates))
    max_marks = int(rng.choice([100, 3]))
    sizes = nodule_sizes(candidates, annotations, scans=scans, max_marks=max_marks)
    reference = _script_sizes(candidates, annotations, scans, max_marks)
    # the FROC's own matching says the same (evaluation reads both off one matching)
    entries = match_nodules(candidates, annotations, excluded, scans=scans, max_marks=max_marks)
    for table in (sizes, entries.sizes()):
        mine = sorted(zip(table.seriesuid, table.diameter_mm, table.predicted_mm, strict=True))
        assert [m[0] for m in mine] == [r[0] for r in sorted(reference)]
        np.testing.assert_allclose([m[1:] for m in mine], [r[1:] for r in sorted(reference)], atol=1e-12)
    detected = entries.kind == 1
    assert np.isfinite(entries.predicted_mm[detected]).all() and np.isnan(entries.predicted_mm[~detected]).all()
    assert np.isfinite(entries.diameter[detected | (entries.kind == 2)]).all()
    summary = size_summary(sizes, bootstrap=100)
    if reference:
        relative = np.array([100 * (p - t) / t for _, t, p in reference])
        assert summary["error_pct"]["estimate"] == pytest.approx(np.median(np.abs(relative)))
        assert summary["bias_pct"]["estimate"] == pytest.approx(np.median(relative))
        assert summary["error_pct"]["low"] <= summary["error_pct"]["estimate"] <= summary["error_pct"]["high"]
        assert summary["nodules"] == len(reference)


def test_sizes_of_hand_made_cases_and_their_edge_cases():
    annotations = _frame([["A", 0, 0, 0, 10.0], ["A", 50, 0, 0, 20.0], ["B", 0, 0, 0, 8.0]], "diameter_mm")
    candidates = pd.DataFrame(
        [["A", 1, 0, 0, 0.9, 12.0], ["A", 0, 1, 0, 0.5, 30.0],  # the more probable one's size counts
         ["A", 52, 0, 0, 0.4, 15.0], ["B", 20, 0, 0, 0.8, 8.0]],  # B's nodule is missed
        columns=[*COLUMNS, "probability", "diameter_mm"],
    )  # fmt: skip
    sizes = nodule_sizes(candidates, annotations)
    assert sizes[["seriesuid", "diameter_mm", "predicted_mm"]].values.tolist() == [["A", 10.0, 12.0],
                                                                                   ["A", 20.0, 15.0]]  # fmt: skip
    summary = size_summary(sizes, bootstrap=50)
    assert summary["error_pct"]["estimate"] == pytest.approx(22.5)  # median of 20 % and 25 %
    assert summary["bias_pct"]["estimate"] == pytest.approx(-2.5)  # median of +20 % and -25 %
    assert summary["error_pct"]["low"] == summary["error_pct"]["high"] == pytest.approx(22.5)  # one scan
    none = size_summary(nodule_sizes(candidates[candidates.seriesuid == "B"], annotations), bootstrap=50)
    assert none["nodules"] == 0 and math.isnan(none["error_pct"]["estimate"]) and "no nodule" in none["undefined"]
    # LUNA16 candidate files carry no diameter: no sizes, not an error
    assert nodule_sizes(candidates.drop(columns="diameter_mm"), annotations).empty
    unsized = match_nodules(candidates.drop(columns="diameter_mm"), annotations)
    assert unsized.predicted_mm is None and unsized.sizes().empty and unsized.detected == 2
    with pytest.raises(InputError, match="diameter_mm of row 1"):
        nodule_sizes(candidates.assign(diameter_mm=["x", 1, 2, 3]), annotations)


def test_froc_summary_bootstraps_scans():
    rng = np.random.default_rng(3)
    candidates, annotations, excluded, scans = _random_case(rng, 30)
    entries = match_nodules(candidates, annotations, excluded, scans=scans)
    summary = froc_summary(entries, bootstrap=200, seed=1)
    result = summary["cpm"]
    assert result["low"] <= result["estimate"] <= result["high"]
    assert result["estimate"] == pytest.approx(cpm(entries.kind, entries.probability))
    assert set(summary["sensitivity"]) == {"0.125", "0.25", "0.5", "1", "2", "4", "8"}
    again = froc_summary(entries, bootstrap=200, seed=1)
    assert again["cpm"] == result
    one_scan = match_nodules(candidates[candidates.seriesuid == scans[0]], annotations[annotations.seriesuid ==
                             scans[0]], scans=scans[:1])  # fmt: skip
    if one_scan.findings:
        single = froc_summary(one_scan, bootstrap=50)["cpm"]
        assert single["low"] == single["high"] == single["estimate"]  # one scan: every resample is the same


def test_froc_summary_intervals_equal_one_bootstrap_per_figure():
    """The joint bootstrap (one FROC per resample) gives each figure the interval a bootstrap of that
    figure alone gives, with the same seed; a metric giving the wrong number of figures is refused."""
    rng = np.random.default_rng(5)
    candidates, annotations, excluded, scans = _random_case(rng, 25)
    entries = match_nodules(candidates, annotations, excluded, scans=scans)
    groups = entries.scan.astype(str)
    summary = froc_summary(entries, bootstrap=150, seed=2)
    alone = bootstrap_ci(lambda k, p: cpm(k, p), entries.kind, entries.probability, groups=groups, n_resamples=150,
                         seed=2)  # fmt: skip
    assert summary["cpm"] == alone
    for rate in LUNA16_RATES:

        def at_rate(k: np.ndarray, p: np.ndarray, r: float = rate) -> float:
            fps, sens, _ = froc_curve(k, p)
            return float(sensitivity_at(fps, sens, [r])[0])

        expected = bootstrap_ci(at_rate, entries.kind, entries.probability, groups=groups, n_resamples=150, seed=2)
        assert summary["sensitivity"][f"{rate:g}"] == expected
    with pytest.raises(InputError, match="2 value"):
        bootstrap_cis(lambda k, p: [1.0, 2.0], entries.kind, entries.probability, names=["one"], n_resamples=5)


# --- 2D boxes ------------------------------------------------------------------------------------------


def test_box_iou_against_rasterised_boxes():
    rng = np.random.default_rng(0)
    a = np.sort(rng.integers(0, 40, size=(20, 2, 2)), axis=1).transpose(0, 2, 1).reshape(20, 4)[:, [0, 2, 1, 3]]
    b = np.sort(rng.integers(0, 40, size=(15, 2, 2)), axis=1).transpose(0, 2, 1).reshape(15, 4)[:, [0, 2, 1, 3]]

    def raster(box):
        grid = np.zeros((40, 40), bool)
        grid[box[1] : box[3], box[0] : box[2]] = True
        return grid

    expected = np.zeros((20, 15))
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            union = (raster(p) | raster(q)).sum()
            expected[i, j] = (raster(p) & raster(q)).sum() / union if union else 0.0
    np.testing.assert_allclose(box_iou(a, b), expected)


def _coco_ap(detections, truths, iou):
    pytest.importorskip("pycocotools", reason="pycocotools (the dev extra) is the reference COCO AP")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images = sorted(set(detections["image"]) | set(truths["image"]))
    ids = {name: i + 1 for i, name in enumerate(images)}

    def category(r) -> int:  # a "finding" column names each row's category (several findings: COCO's mAP)
        return int(getattr(r, "finding", 0)) + 1

    gt = COCO()
    gt.dataset = {
        "images": [{"id": i} for i in ids.values()],
        "categories": [{"id": k + 1, "name": f"finding {k}"} for k in range(4)],
        "annotations": [
            {"id": k + 1, "image_id": ids[r.image], "category_id": category(r),
             "bbox": [r.x0, r.y0, r.x1 - r.x0, r.y1 - r.y0], "area": (r.x1 - r.x0) * (r.y1 - r.y0), "iscrowd": 0}
            for k, r in enumerate(truths.itertuples())
        ],
    }  # fmt: skip
    gt.createIndex()
    results = [
        {"image_id": ids[r.image], "category_id": category(r), "bbox": [r.x0, r.y0, r.x1 - r.x0, r.y1 - r.y0],
         "score": r.score}
        for r in detections.itertuples()
    ]  # fmt: skip
    dt = gt.loadRes(results) if results else COCO()
    evaluation = COCOeval(gt, dt, "bbox")
    evaluation.params.iouThrs = np.array([iou])
    evaluation.params.areaRng = [[0, 1e10]]
    evaluation.params.areaRngLbl = ["all"]
    evaluation.params.maxDets = [100]
    evaluation.evaluate()
    evaluation.accumulate()
    precision = evaluation.eval["precision"][0, :, :, 0, 0]  # (recall levels, categories)
    present = np.all(precision > -1, axis=0)  # categories with a true box
    return float(np.mean(precision[:, present])) if present.any() else float("nan")


def _random_boxes(rng, images=8):
    truths, detections = [], []
    for i in range(images):
        name = f"img{i}"
        for _ in range(rng.integers(0, 4)):
            x, y = rng.uniform(0, 400, 2)
            w, h = rng.uniform(10, 80, 2)
            truths.append([name, x, y, x + w, y + h])
            for _ in range(rng.integers(0, 3)):  # detections around it
                dx, dy, dw, dh = rng.normal(0, 6, 4)
                detections.append([name, x + dx, y + dy, x + w + dx + dw, y + h + dy + dh, rng.random()])
        for _ in range(rng.integers(0, 5)):
            x, y = rng.uniform(0, 400, 2)
            detections.append([name, x, y, x + rng.uniform(5, 60), y + rng.uniform(5, 60), rng.random()])
    return (pd.DataFrame(detections, columns=["image", "x0", "y0", "x1", "y1", "score"]),
            pd.DataFrame(truths, columns=["image", "x0", "y0", "x1", "y1"]))  # fmt: skip


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("iou", [0.5, 0.75, 0.3])
def test_average_precision_matches_pycocotools(seed, iou):
    rng = np.random.default_rng(seed)
    detections, truths = _random_boxes(rng)
    if truths.empty:
        assert math.isnan(average_precision_boxes(detections, truths, iou=iou))
        return
    assert average_precision_boxes(detections, truths, iou=iou) == pytest.approx(_coco_ap(detections, truths, iou))


def test_average_precision_edge_cases():
    truths = pd.DataFrame([["a", 0, 0, 10, 10]], columns=["image", "x0", "y0", "x1", "y1"])
    none = pd.DataFrame(columns=["image", "x0", "y0", "x1", "y1", "score"])
    assert average_precision_boxes(none, truths) == 0.0
    perfect = pd.DataFrame([["a", 0, 0, 10, 10, 0.3]], columns=["image", "x0", "y0", "x1", "y1", "score"])
    assert average_precision_boxes(perfect, truths) == pytest.approx(1.0)
    # more than max_detections in one image: only the best count (COCO's maxDets)
    many = pd.DataFrame([["a", 100, 100, 110, 110, 0.9]] * 3 + [["a", 0, 0, 10, 10, 0.1]],
                        columns=["image", "x0", "y0", "x1", "y1", "score"])  # fmt: skip
    assert average_precision_boxes(many, truths, max_detections=3) == 0.0
    assert average_precision_boxes(many, truths, max_detections=4) == pytest.approx(_coco_ap(many, truths, 0.5))
    flipped = pd.DataFrame([["a", 10, 0, 0, 10, 0.5]], columns=["image", "x0", "y0", "x1", "y1", "score"])
    with pytest.raises(InputError, match="x1 < x0"):
        average_precision_boxes(flipped, truths)


def test_per_image_froc_of_boxes():
    truths = pd.DataFrame([["a", 0, 0, 10, 10], ["b", 50, 50, 70, 70]], columns=["image", "x0", "y0", "x1", "y1"])
    detections = pd.DataFrame(
        [["a", 1, 1, 10, 10, 0.9], ["a", 0, 0, 9, 10, 0.4], ["a", 30, 30, 40, 40, 0.8], ["b", 0, 0, 5, 5, 0.7]],
        columns=["image", "x0", "y0", "x1", "y1", "score"],
    )
    entries = match_boxes(detections, truths, iou=0.5, images=["a", "b", "c", "d"])
    assert (entries.detected, entries.false_positives, entries.duplicates, entries.scans) == (1, 2, 1, 4)
    assert entries.diameter is None and entries.sizes().empty  # boxes have no diameter
    fps, sens, _ = froc_curve(entries.kind, entries.probability)
    np.testing.assert_allclose(fps, [0, 0, 0.25, 0.5])
    np.testing.assert_allclose(sens, [0, 0.5, 0.5, 0.5])


@pytest.mark.parametrize("seed", range(6))
def test_mean_average_precision_matches_pycocotools_over_findings(seed):
    """COCO's mAP: each finding's AP (its detections against its boxes only), averaged over the
    findings that have a box; a finding with detections but no box is left out."""
    rng = np.random.default_rng(seed)
    parts = [_random_boxes(rng) for _ in range(3)]
    detections = pd.concat([d.assign(finding=k) for k, (d, _) in enumerate(parts)], ignore_index=True)
    truths = pd.concat([t.assign(finding=k) for k, (_, t) in enumerate(parts) if k != 2], ignore_index=True)
    rows = pd.concat([box_matches(detections[detections.finding == k].drop(columns="finding"),
                                  truths[truths.finding == k].drop(columns="finding"), iou=0.5).assign(finding=k)
                      for k in range(3)], ignore_index=True)  # fmt: skip
    value = mean_average_precision(*(rows[c].to_numpy() for c in ("score", "hit", "truths", "finding")))
    if truths.empty:
        assert math.isnan(value)
        return
    assert value == pytest.approx(_coco_ap(detections, truths, 0.5))
    each = [average_precision_boxes(detections[detections.finding == k], truths[truths.finding == k], iou=0.5)
            for k in range(2)]  # fmt: skip
    assert value == pytest.approx(np.nanmean(each))


def test_top_box_hits_score_each_images_most_probable_detection_only():
    columns = ["image", "x0", "y0", "x1", "y1"]
    truths = pd.DataFrame([["a", 0, 0, 10, 10], ["a", 50, 50, 60, 60], ["b", 0, 0, 10, 10], ["c", 0, 0, 10, 10]],
                          columns=columns)  # fmt: skip
    detections = pd.DataFrame(
        [["a", 50, 50, 60, 60, 0.9], ["a", 0, 0, 10, 10, 0.5],  # the best finds the second box only
         ["b", 0, 0, 10, 10, 0.2], ["b", 30, 30, 40, 40, 0.2],  # a tie: the first listed counts
         ["d", 0, 0, 10, 10, 0.9]],  # an image without boxes
        columns=[*columns, "score"],
    )  # fmt: skip
    hits = top_box_hits(detections, truths, iou=0.5)
    assert hits.values.tolist() == [["a", False], ["a", True], ["b", True], ["c", False]]  # c has no detection
    assert top_box_hits(detections.iloc[:0], truths, iou=0.5)["hit"].sum() == 0
    assert top_box_hits(detections, truths.iloc[:0], iou=0.5).empty
