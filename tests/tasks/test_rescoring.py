"""The detector's second stage: Hessian features of candidates (checked against scikit-image), the
logistic model fitted on validation candidates, and its use at prediction."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from skimage.feature import hessian_matrix, hessian_matrix_eigvals

from medsight.core.errors import InputError
from medsight.core.geometry import Geometry
from medsight.core.volume import Volume
from medsight.planning import CandidateRescoring
from medsight.tasks.rescoring import FEATURES, SCALES, candidate_features, fit_rescoring, model_terms, rescore

ISO = Geometry(spacing=(1.0, 1.0, 1.0), origin=(-20.0, -30.0, 100.0))


def _lung(shape=(40, 48, 48), seed=0) -> np.ndarray:
    """Lung-like background with a 7 mm ball (centre voxel (12, 14, 14)) and a 3 mm tube along x (z 28, y 34)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    image = np.full(shape, -850.0) + rng.normal(0, 5, shape)
    image[(z - 12) ** 2 + (y - 14) ** 2 + (x - 14) ** 2 < 3.5**2] = 40.0
    image[(z - 28) ** 2 + (y - 34) ** 2 < 1.5**2] = 40.0
    return image.astype(np.float32)


def _rows(geometry: Geometry, voxels, probabilities, diameters=None) -> pd.DataFrame:
    world = geometry.index_to_world(np.asarray(voxels, float))
    diameters = np.full(len(world), 6.0) if diameters is None else np.asarray(diameters, float)
    return pd.DataFrame({"coordX": world[:, 0], "coordY": world[:, 1], "coordZ": world[:, 2],
                         "diameter_mm": diameters, "probability": probabilities})  # fmt: skip


def test_a_ball_is_a_blob_and_a_tube_is_not():
    image = _lung()
    found = _rows(ISO, [[12, 14, 14], [28, 34, 24]], [0.5, 0.5])
    features = pd.DataFrame(candidate_features(image, ISO, found), columns=FEATURES)
    ball, tube = features.iloc[0], features.iloc[1]
    assert ball["value"] == pytest.approx(40.0) and ball["logit"] == pytest.approx(0.0, abs=1e-6)
    dot = [f"dot_{s:g}" for s in SCALES]
    assert ball[dot].max() > 2 + tube[dot].max()  # log(1 + dot): the ball is many times the tube
    for s in SCALES:  # a bright ball curves down along every axis; a tube is flat along its axis
        assert ball[f"l3_{s:g}"] < 0
        assert abs(tube[f"l3_{s:g}"]) < 0.25 * abs(tube[f"l1_{s:g}"])


def test_the_eigenvalues_are_scikit_images_scale_normalised():
    image = _lung()
    found = _rows(ISO, [[12, 14, 14]], [0.9])
    features = pd.DataFrame(candidate_features(image, ISO, found), columns=FEATURES).iloc[0]
    for s in SCALES:
        matrix = hessian_matrix(image.astype(float), sigma=s, mode="nearest", order="rc", use_gaussian_derivatives=True)
        near = hessian_matrix_eigvals(matrix)[:, 11:14, 13:16, 13:16].reshape(3, -1).T * s**2  # the centre's 27
        near = np.take_along_axis(near, np.argsort(-np.abs(near), axis=1), axis=1)
        dot = np.where((near < 0).all(axis=1), near[:, 2] ** 2 / np.abs(near[:, 0]), 0.0)  # Li et al.'s filter
        reference = near[np.argmax(dot)]
        mine = [features[f"l{k}_{s:g}"] for k in (1, 2, 3)]
        np.testing.assert_allclose(mine, reference, rtol=0.02, atol=1e-3 * abs(reference[0]))
        assert features[f"dot_{s:g}"] == pytest.approx(np.log1p(dot.max()), rel=0.02)


def test_features_follow_world_millimetres_on_an_anisotropic_grid():
    image = _lung()
    thick = Geometry(spacing=(2.0, 1.0, 1.0), origin=(5.0, 0.0, 0.0))
    on_thick = image[::2]  # the same scene sampled every other slice: the ball's centre is slice 6
    iso = pd.DataFrame(candidate_features(image, ISO, _rows(ISO, [[12, 14, 14]], [0.5])), columns=FEATURES)
    aniso = pd.DataFrame(candidate_features(on_thick, thick, _rows(thick, [[6, 14, 14]], [0.5])), columns=FEATURES)
    for s in SCALES[1:]:  # at scales well above the slice gap the two grids see the same ball
        assert aniso[f"l1_{s:g}"].iloc[0] == pytest.approx(iso[f"l1_{s:g}"].iloc[0], rel=0.15)


def test_no_candidates_and_a_bad_image_shape():
    empty = _rows(ISO, np.zeros((0, 3)), [])
    assert candidate_features(_lung(), ISO, empty).shape == (0, len(FEATURES))
    with pytest.raises(InputError, match="one 3D channel"):
        candidate_features(_lung()[None], ISO, empty)


def test_fitting_needs_candidates_on_findings_and_off_them():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(50, len(FEATURES)))
    assert fit_rescoring(features, np.arange(50) < 4) is None  # 4 on findings: too few
    assert fit_rescoring(features, np.arange(50) < 46) is None  # 4 off them
    model = fit_rescoring(features, np.arange(50) < 10)
    assert model is not None and model.candidates == 50 and model.findings == 10
    assert model.features == list(FEATURES)


def test_the_fitted_stage_puts_blobs_above_tubes_whatever_the_network_said():
    rng = np.random.default_rng(2)
    images, voxels = [], []
    for seed in range(6):  # candidates on balls (findings) and on tubes, the tubes more probable to the network
        images.append(_lung(seed=seed))
        voxels.append([[12, 14, 14], [28, 34, 10 + seed], [28, 34, 30 - seed]])
    features, labels = [], []
    for image, where in zip(images, voxels, strict=True):
        probabilities = [0.3, *rng.uniform(0.6, 0.9, 2)]
        features.append(candidate_features(image, ISO, _rows(ISO, where, probabilities)))
        labels.append([True, False, False])
    model = fit_rescoring(np.concatenate(features), np.concatenate(labels))
    assert model is not None
    scene = _lung(seed=9)
    found = _rows(ISO, [[28, 34, 20], [12, 14, 14]], [0.8, 0.3])
    out = rescore(found, scene, ISO, model)
    assert out["network_probability"].tolist() == [0.3, 0.8]  # the ball first now
    assert out["probability"].iloc[0] > 0.5 > out["probability"].iloc[1]
    # by hand: standardised features, then each pair's product (i <= j, row by row), weights, sigmoid
    standard = (candidate_features(scene, ISO, found) - model.mean) / model.scale
    n = standard.shape[1]
    products = [[row[i] * row[j] for i in range(n) for j in range(i, n)] for row in standard]
    assert model.pairs and len(model.coef) == n + len(products[0])
    z = model.intercept + np.concatenate([standard, products], axis=1) @ np.asarray(model.coef)
    np.testing.assert_allclose(sorted(1 / (1 + np.exp(-z)), reverse=True), out["probability"], rtol=1e-5)


def test_a_stage_of_other_features_is_refused_and_nothing_is_kept_as_is():
    model = CandidateRescoring(features=["logit"], mean=[0.0], scale=[1.0], coef=[1.0], intercept=0.0,
                               candidates=10, findings=5)  # fmt: skip
    with pytest.raises(InputError, match="train the detector again"):
        rescore(_rows(ISO, [[12, 14, 14]], [0.5]), _lung(), ISO, model)
    good = model.model_copy(update={"features": list(FEATURES), "mean": [0.0] * len(FEATURES),
                                    "scale": [1.0] * len(FEATURES), "coef": [0.0] * len(FEATURES)})  # fmt: skip
    empty = rescore(_rows(ISO, np.zeros((0, 3)), []), _lung(), ISO, good)
    assert empty.empty and "network_probability" in empty.columns


def test_pairs_learn_what_one_weight_per_feature_cannot():
    """Findings where two features agree in sign (an interaction): the pairwise model separates
    them, a weight per feature cannot; a plan of the older, linear kind still applies as it was."""
    rng = np.random.default_rng(3)
    features = rng.normal(size=(2000, len(FEATURES)))
    on_finding = features[:, 0] * features[:, 1] > 0.3
    model = fit_rescoring(features, on_finding)
    assert model is not None and model.pairs
    test = rng.normal(size=(400, len(FEATURES)))
    truth = test[:, 0] * test[:, 1] > 0.3

    def auc(scores: np.ndarray) -> float:
        return float(np.mean(scores[truth][:, None] > scores[~truth][None, :]))

    standard = (test - np.asarray(model.mean)) / np.asarray(model.scale)
    assert auc(model_terms(standard, pairs=True) @ np.asarray(model.coef)) > 0.9
    linear = model.model_copy(update={"pairs": False, "coef": model.coef[: len(FEATURES)]})
    assert auc(model_terms(standard, pairs=False) @ np.asarray(linear.coef)) < 0.7
    # a linear plan (fitted by an older version) rescores with its weights alone
    scene = _lung(seed=4)
    found = _rows(ISO, [[28, 34, 20], [12, 14, 14]], [0.8, 0.3])
    out = rescore(found, scene, ISO, CandidateRescoring.model_validate(linear.model_dump(exclude={"pairs"})))
    standard = (candidate_features(scene, ISO, found) - linear.mean) / linear.scale
    z = linear.intercept + standard @ np.asarray(linear.coef)
    np.testing.assert_allclose(sorted(1 / (1 + np.exp(-z)), reverse=True), out["probability"], rtol=1e-5)


def test_the_plan_keeps_the_stage_and_checks_it():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="one mean, scale and size weight per feature"):
        CandidateRescoring(features=["a", "b"], mean=[0.0], scale=[1.0, 1.0], coef=[1.0, 1.0], intercept=0.0,
                           candidates=1, findings=1)  # fmt: skip
    with pytest.raises(ValidationError, match="needs 5 weights for 2 features and their pairwise products; it has 2"):
        CandidateRescoring(features=["a", "b"], mean=[0.0, 0.0], scale=[1.0, 1.0], coef=[1.0, 1.0], intercept=0.0,
                           pairs=True, candidates=1, findings=1)  # fmt: skip
    with pytest.raises(ValidationError, match="needs 2 weights for 2 features; it has 5"):
        CandidateRescoring(features=["a", "b"], mean=[0.0, 0.0], scale=[1.0, 1.0], coef=[1.0] * 5, intercept=0.0,
                           candidates=1, findings=1)  # fmt: skip
    with pytest.raises(ValidationError, match="scales must be positive"):
        CandidateRescoring(features=["a"], mean=[0.0], scale=[0.0], coef=[1.0], intercept=0.0, candidates=1,
                           findings=1)  # fmt: skip


def test_settle_fits_the_stage_on_validation_candidates_and_prediction_applies_it(tmp_path, monkeypatch):
    from medsight.data.manifest import Manifest
    from medsight.io import write
    from medsight.planning import Plan
    from medsight.tasks.base import TaskData
    from medsight.tasks.detection import DetectionTask

    rng = np.random.default_rng(3)
    rows, maps = [], []
    for n in range(8):
        image = _lung(seed=n)
        write(Volume(image[None], ISO), tmp_path / f"s{n}.nii.gz")
        ball = ISO.index_to_world([12.0, 14.0, 14.0])
        boxes = [{"label": "nodule", "center": ball.tolist(), "diameter_mm": 7.0}]
        if n == 0:  # an excluded finding on a tube: its candidate is left out of the fit
            boxes.append({"label": "nodule", "center": ISO.index_to_world([28.0, 34.0, 24.0]).tolist(),
                          "diameter_mm": -1.0, "excluded": True})  # fmt: skip
        rows.append({"case_id": f"s{n}", "patient_id": f"s{n}", "image": f"s{n}.nii.gz", "boxes": json.dumps(boxes),
                     "split": "val" if n < 6 else "train"})  # fmt: skip
        probability = np.zeros(image.shape, np.float32)  # the network: the tube as likely as the ball, or more
        probability[11:14, 13:16, 13:16] = 0.4
        probability[27:30, 33:36, 9 + n : 12 + n] = rng.uniform(0.5, 0.9)
        probability[27:30, 33:36, 23:26] = rng.uniform(0.5, 0.9)
        maps.append(probability)
    manifest = Manifest(pd.DataFrame(rows), tmp_path)
    task = DetectionTask.from_spec(DetectionTask.spec_type(kind="detection"))
    plan = Plan.model_construct(rescoring=None)

    def predicted(model, data, indices):
        for i in indices:
            yield SimpleNamespace(), data.manifest.table.iloc[i], maps[i], Volume(maps[i][None], ISO)

    monkeypatch.setattr(task.backbone, "_predicted", predicted)
    monkeypatch.setattr(task, "_probability", lambda logits, entry: logits)
    data = TaskData(manifest=manifest, inputs=SimpleNamespace(items_of=lambda rows: list(rows)),
                    targets=np.zeros(0), preprocess=plan, in_channels=1)  # fmt: skip
    settled = task.settle(None, data, data.indices("val"))  # the 6 validation scans and the 2 training ones
    stage = settled.rescoring
    assert stage is not None and stage.findings == 8 and stage.candidates == 8 * 3 - 1  # the excluded one left out
    alone = DetectionTask.from_spec(DetectionTask.spec_type(kind="detection", rescore_training_scans=0))
    monkeypatch.setattr(alone.backbone, "_predicted", predicted)
    monkeypatch.setattr(alone, "_probability", lambda logits, entry: logits)
    assert alone.settle(None, data, data.indices("val")).rescoring.candidates == 6 * 3 - 1
    # the stage is fitted on what it will score: the proposals, beyond the candidates kept
    few = DetectionTask.from_spec(DetectionTask.spec_type(kind="detection", max_candidates=1, proposals=3))
    monkeypatch.setattr(few.backbone, "_predicted", predicted)
    monkeypatch.setattr(few, "_probability", lambda logits, entry: logits)
    assert few.settle(None, data, data.indices("val")).rescoring.candidates == 8 * 3 - 1
    rescored = TaskData(manifest=manifest, inputs=data.inputs, targets=np.zeros(0), preprocess=settled, in_channels=1)
    _, predictions = task.predict_split(None, rescored, np.arange(2))
    first = pd.DataFrame(json.loads(predictions["candidate_list"].iloc[1]))
    assert first["network_probability"].iloc[0] == pytest.approx(0.4)  # the ball first after rescoring
    off = DetectionTask.from_spec(DetectionTask.spec_type(kind="detection", rescore=False))
    monkeypatch.setattr(off.backbone, "_predicted", predicted)
    monkeypatch.setattr(off, "_probability", lambda logits, entry: logits)
    assert off.settle(None, data, data.indices("val")).rescoring is None


def test_detect_on_files_applies_the_plans_stage(monkeypatch):
    import medsight.tasks.candidates as module
    from medsight.tasks.candidates import Candidates, DetectionSpec

    image = _lung()
    probability = np.zeros(image.shape, np.float32)
    probability[11:14, 13:16, 13:16] = 0.3  # the ball
    probability[27:30, 33:36, 18:21] = 0.8  # the tube, more probable to the network
    found = Candidates(DetectionSpec(kind="detection"))
    monkeypatch.setattr(module, "preprocess_for_plan", lambda array, spacing, plan: SimpleNamespace(image=array))
    monkeypatch.setattr(found, "probability", lambda logits, case: probability)
    blob_first = CandidateRescoring(
        features=list(FEATURES), mean=[0.0] * len(FEATURES), scale=[1.0] * len(FEATURES),
        coef=[1.0 if name.startswith("dot_") else 0.0 for name in FEATURES], intercept=-4.0, candidates=10, findings=5,
    )  # fmt: skip
    volume = Volume(image[None], ISO)
    for plan, first in ((SimpleNamespace(in_channels=1, rescoring=None), 0.8),
                        (SimpleNamespace(in_channels=1, rescoring=blob_first), 0.3)):  # fmt: skip
        row, _ = found.detect(volume, plan, lambda array: array)
        listed = pd.DataFrame(json.loads(row["candidate_list"]))
        assert len(listed) == 2 and listed["probability"].is_monotonic_decreasing
        assert (listed["network_probability"] if plan.rescoring else listed["probability"]).iloc[0] == first


def test_the_stage_keeps_the_most_probable_of_more_proposals_than_it_keeps(monkeypatch):
    """A finding the network ranks below ``max_candidates`` is still proposed to the stage, which
    may keep it; without a stage the network's ``max_candidates`` are kept."""
    from pydantic import ValidationError

    import medsight.tasks.candidates as module
    from medsight.tasks.candidates import Candidates, DetectionSpec

    image = _lung()
    probability = np.zeros(image.shape, np.float32)
    probability[11:14, 13:16, 13:16] = 0.3  # the ball
    probability[27:30, 33:36, 8:11] = 0.8  # two places on the tube, more probable to the network
    probability[27:30, 33:36, 30:33] = 0.7
    monkeypatch.setattr(module, "preprocess_for_plan", lambda array, spacing, plan: SimpleNamespace(image=array))
    blob_first = CandidateRescoring(
        features=list(FEATURES), mean=[0.0] * len(FEATURES), scale=[1.0] * len(FEATURES),
        coef=[1.0 if name.startswith("dot_") else 0.0 for name in FEATURES], intercept=-4.0, candidates=10, findings=5,
    )  # fmt: skip
    volume = Volume(image[None], ISO)
    cases = [(3, None, True), (3, blob_first, False), (2, blob_first, True), (1, blob_first, True)]
    for proposals, stage, tube in cases:  # two proposals hold only the tube's: the ball is never scored
        found = Candidates(DetectionSpec(kind="detection", max_candidates=1, proposals=proposals))
        monkeypatch.setattr(found, "probability", lambda logits, case: probability)
        row, _ = found.detect(volume, SimpleNamespace(in_channels=1, rescoring=stage), lambda array: array)
        listed = pd.DataFrame(json.loads(row["candidate_list"]))
        assert row["candidates"] == 1
        network = (listed["network_probability"] if stage else listed["probability"]).iloc[0]
        assert network > 0.5 if tube else network == pytest.approx(0.3)
    with pytest.raises(ValidationError, match=r"proposals \(50\) must be at least max_candidates \(100\)"):
        DetectionSpec(kind="detection", proposals=50)


def _ball(diameter: float, seed: int, shape=(40, 48, 48)) -> np.ndarray:
    """Lung-like background with a ball of ``diameter`` mm centred on voxel (20, 24, 24)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    image = np.full(shape, -850.0) + rng.normal(0, 5, shape)
    image[(z - 20) ** 2 + (y - 24) ** 2 + (x - 24) ** 2 < (diameter / 2) ** 2] = 40.0
    return image.astype(np.float32)


def _sized_candidates(rng, sizes):
    """Per ball: the candidate at its centre (the network's diameter blurred towards 8 mm, whatever
    the ball's) and one in the background; features, labels and the annotated diameters."""
    features, labels, diameters = [], [], []
    for n, diameter in enumerate(sizes):
        image = _ball(diameter, seed=n)
        network = 8.0 + 0.2 * (diameter - 8.0) + rng.normal(0, 0.5)
        rows = _rows(ISO, [[20, 24, 24], [6, 6, 40]], [0.5, 0.4], [network, 5.0])
        features.append(candidate_features(image, ISO, rows))
        labels.append([True, False])
        diameters.append([diameter, np.nan])
    return np.concatenate(features), np.concatenate(labels), np.concatenate(diameters)


def test_the_size_model_corrects_the_networks_blurred_diameters():
    """The network calls every ball ~8 mm; the size model, fitted on candidates on findings, reads
    the ball's size from the image around it and is kept because it is closer in cross-validation."""
    rng = np.random.default_rng(4)
    features, labels, diameters = _sized_candidates(rng, rng.uniform(3.0, 16.0, 30))
    model = fit_rescoring(features, labels, diameters)
    assert model is not None and model.size_coef is not None and len(model.size_coef) == len(FEATURES)
    truth = np.array([4.0, 7.0, 12.0, 15.0])
    scenes = [(_ball(d, seed=100 + n), _rows(ISO, [[20, 24, 24]], [0.5], [8.0])) for n, d in enumerate(truth)]
    out = np.array([rescore(rows, image, ISO, model)["diameter_mm"].iloc[0] for image, rows in scenes])
    assert np.median(np.abs(out - truth) / truth) < 0.5 * np.median(np.abs(8.0 - truth) / truth)
    kept = rescore(scenes[0][1], scenes[0][0], ISO, model)
    assert kept["network_diameter_mm"].iloc[0] == 8.0  # the network's kept beside it
    # by hand: the standardised features, the weights, exp
    standard = (candidate_features(scenes[0][0], ISO, scenes[0][1]) - model.mean) / model.scale
    by_hand = np.exp(model.size_intercept + standard @ np.asarray(model.size_coef))
    assert kept["diameter_mm"].iloc[0] == pytest.approx(float(by_hand[0]), rel=1e-5)
    low, high = model.size_range
    assert low == pytest.approx(diameters[labels].min() / 2) and high == pytest.approx(diameters[labels].max() * 2)
    wild = model.model_copy(update={"size_intercept": model.size_intercept + 20.0})  # e^20 times larger
    assert rescore(scenes[0][1], scenes[0][0], ISO, wild)["diameter_mm"].iloc[0] == pytest.approx(high)


def test_a_size_model_that_does_not_help_is_not_kept():
    from medsight.tasks.rescoring import fit_sizes

    rng = np.random.default_rng(5)
    features, labels, diameters = _sized_candidates(rng, rng.uniform(3.0, 16.0, 30))
    on = labels.astype(bool)
    exact = fit_sizes(features[on], diameters[on], network=diameters[on])  # the network is already exact
    assert exact is None
    assert fit_sizes(features[on][:9], diameters[on][:9], network=np.full(9, 8.0)) is None  # too few to fit on
    assert fit_rescoring(features, labels).size_coef is None  # no diameters given: no size model
    plain = fit_rescoring(features, labels, np.full(len(labels), np.nan))  # none known
    assert plain is not None and plain.size_coef is None and plain.size_intercept is None


def test_the_plan_checks_the_size_model():
    from pydantic import ValidationError

    spec = {"features": ["a"], "mean": [0.0], "scale": [1.0], "coef": [1.0], "intercept": 0.0, "candidates": 1,
            "findings": 1}  # fmt: skip
    assert CandidateRescoring(**spec, size_coef=[0.5], size_intercept=1.0, size_range=(1, 60)).size_coef == [0.5]
    with pytest.raises(ValidationError, match="size_coef, size_intercept and size_range, or none"):
        CandidateRescoring(**spec, size_coef=[0.5], size_intercept=1.0)
    with pytest.raises(ValidationError, match="two increasing positive diameters"):
        CandidateRescoring(**spec, size_coef=[0.5], size_intercept=1.0, size_range=(5.0, 2.0))
    with pytest.raises(ValidationError, match="one mean, scale and size weight per feature"):
        CandidateRescoring(**spec, size_coef=[0.5, 1.0], size_intercept=1.0, size_range=(1, 60))


def test_each_candidate_takes_the_diameter_of_the_nearest_finding_it_lies_in():
    from medsight.metrics.detection import within_spheres
    from medsight.tasks.detection import _hit_diameters

    centres = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 0.0]])
    diameters = np.array([20.0, 8.0])
    points = np.array([[5.0, 0.0, 0.0], [-5.0, 0.0, 0.0], [50.0, 0.0, 0.0]])
    hits = within_spheres(points, centres, diameters)
    out = _hit_diameters(points, hits, centres, diameters)
    assert out[0] == 8.0 and out[1] == 20.0 and np.isnan(out[2])  # inside both: the nearer one's
    assert _hit_diameters(points, np.zeros((3, 0), bool), np.zeros((0, 3)), np.zeros(0)).shape == (3,)
