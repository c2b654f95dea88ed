"""Task losses against references written out (CORN as in its paper's code), and a tiny fit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from medsight.core import ConfigError, InputError
from medsight.metrics import quadratic_weighted_kappa
from medsight.tasks import (
    ClassificationTask,
    attention_pool,
    corn_class_probabilities,
    corn_loss,
    fit_attention_temperature,
    fuse_views,
)


def _corn_reference(logits, y):
    """The loop from the CORN authors' reference code (coral-pytorch's corn_loss)."""
    losses, examples = 0.0, 0
    for task in range(logits.shape[1]):
        mask = y > task - 1
        labels = (y[mask] > task).float()
        if len(labels) == 0:
            continue
        examples += len(labels)
        pred = logits[mask, task]
        losses += -torch.sum(F.logsigmoid(pred) * labels + (F.logsigmoid(pred) - pred) * (1 - labels))
    return losses / examples


@pytest.mark.parametrize("seed", range(3))
def test_corn_loss_matches_the_reference_loop(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(40, 4, generator=g)
    y = torch.randint(0, 5, (40,), generator=g)
    torch.testing.assert_close(corn_loss(logits, y), _corn_reference(logits, y))


def test_corn_probabilities_are_a_distribution_and_cumulative():
    logits = torch.randn(30, 4)
    p = corn_class_probabilities(logits)
    assert p.shape == (30, 5) and (p >= 0).all()
    torch.testing.assert_close(p.sum(dim=1), torch.ones(30))
    cumulative = torch.cumprod(torch.sigmoid(logits), dim=1)
    torch.testing.assert_close(ClassificationTask.at_least(p, 2), cumulative[:, 1])  # P(grade > 1)


def test_ordinal_task_learns_grades():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 3)).astype(np.float32)
    latent = x @ np.array([1.5, -1.0, 0.5], np.float32) + rng.normal(0, 0.3, 600)
    grades = np.digitize(latent, [-1.5, -0.5, 0.5, 1.5])
    task = ClassificationTask("ordinal", ("0", "1", "2", "3", "4"))
    model = torch.nn.Linear(3, task.num_outputs)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    xt, yt = torch.from_numpy(x), torch.from_numpy(grades)
    for _ in range(300):
        opt.zero_grad()
        task.loss(model(xt), yt).backward()
        opt.step()
    predicted = task.predict(task.probabilities(model(xt))).numpy()
    assert quadratic_weighted_kappa(grades, predicted) > 0.9


def test_binary_and_multiclass_losses_match_torch():
    logits, y = torch.randn(20, 1), torch.randint(0, 2, (20,))
    task = ClassificationTask("binary", ("neg", "pos"), weights=(3.0,))
    expected = F.binary_cross_entropy_with_logits(logits[:, 0], y.float(), pos_weight=torch.tensor([3.0]))
    torch.testing.assert_close(task.loss(logits, y), expected)
    logits, y = torch.randn(20, 3), torch.randint(0, 3, (20,))
    task = ClassificationTask("multiclass", ("a", "b", "c"), weights=(1.0, 2.0, 0.5))
    torch.testing.assert_close(task.loss(logits, y), F.cross_entropy(logits, y, weight=torch.tensor([1.0, 2.0, 0.5])))
    torch.testing.assert_close(task.probabilities(logits).sum(1), torch.ones(20))


def test_multilabel_ignores_unknown_labels():
    logits = torch.randn(6, 3)
    targets = torch.tensor([[1, 0, np.nan], [0, np.nan, 1], [1, 1, 1], [0, 0, 0], [np.nan] * 3, [1, 0, 0]])
    task = ClassificationTask("multilabel", ("a", "b", "c"))
    known = ~torch.isnan(targets)
    manual = F.binary_cross_entropy_with_logits(logits[known], targets[known].float())
    torch.testing.assert_close(task.loss(logits, targets), manual)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "regression", "classes": ("a", "b")}, "task kind"),
        ({"kind": "ordinal", "classes": ("a", "b")}, "at least 3"),
        ({"kind": "binary", "classes": ("a", "b", "c")}, "two classes"),
        ({"kind": "multiclass", "classes": ("a", "b"), "weights": (1.0,)}, "need 2 value"),
        ({"kind": "ordinal", "classes": ("a", "b", "c"), "weights": (1.0,)}, "balance by sampling"),
    ],
)
def test_bad_task_definitions(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ClassificationTask(**kwargs)


def test_view_fusion_to_breast_and_exam():
    table = pd.DataFrame(
        {
            "study_id": ["s1"] * 4 + ["s2"] * 4,
            "laterality": ["L", "L", "R", "R"] * 2,
            "view": ["CC", "MLO"] * 4,
            "score": [0.1, 0.3, 0.8, 0.6, 0.2, 0.2, 0.1, 0.05],
            "target": [0, 0, 1, 1, 0, 0, 0, 0],
        }
    )
    breasts, exams = fuse_views(table, "score", target="target")
    assert breasts["score"].tolist() == [0.3, 0.8, 0.2, 0.1]
    assert exams.set_index("study_id")["score"].to_dict() == {"s1": 0.8, "s2": 0.2}
    assert exams["target"].tolist() == [1, 0]
    mean_breasts, _ = fuse_views(table, "score", method="mean")
    assert mean_breasts["score"].round(3).tolist() == [0.2, 0.7, 0.2, 0.075]
    with pytest.raises(ConfigError, match="columns \\['study_id'\\] are missing"):
        fuse_views(table.drop(columns="study_id"), "score")


def test_attention_pool_is_a_softmax_over_view_logits():
    from scipy.special import logit, softmax

    scores = np.array([0.05, 0.6, 0.3])
    for t in (0.1, 1.0, 7.0):
        assert attention_pool(scores, t) == pytest.approx(float(softmax(logit(scores) / t) @ scores))
    assert attention_pool(scores, 0.01) == pytest.approx(0.6, abs=1e-3)  # tends to the max
    assert attention_pool(scores, 1e4) == pytest.approx(scores.mean(), abs=1e-3)  # and to the mean
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        attention_pool(scores, 0.0)


def _views(rng, n_breasts, positive_views):
    """Two views per breast; a malignant breast shows its finding in ``positive_views`` of them."""
    rows = []
    for b in range(n_breasts):
        malignant = b % 3 == 0
        for v in range(2):
            seen = malignant and v < positive_views
            score = rng.beta(8, 2) if seen else rng.beta(2, 8)
            rows.append({"study_id": f"s{b // 2}", "laterality": "LR"[b % 2], "prob": score, "target": int(malignant)})
    return pd.DataFrame(rows)


def test_attention_fusion_and_its_fitted_temperature():
    rng = np.random.default_rng(0)
    table = _views(rng, 60, positive_views=1)  # a finding seen in one view only: max beats the mean
    t = 0.7
    breasts, exams = fuse_views(table, "prob", method="attention", temperature=t, target="target")
    expected = table.groupby(["study_id", "laterality"])["prob"].apply(lambda s: attention_pool(s.to_numpy(), t))
    np.testing.assert_allclose(breasts["prob"].to_numpy(), expected.to_numpy())
    assert exams["prob"].tolist() == breasts.groupby("study_id")["prob"].max().tolist()
    one_view = fit_attention_temperature(table, "prob", "target")
    both_views = fit_attention_temperature(_views(rng, 60, positive_views=2), "prob", "target")
    assert one_view < 1.0 < both_views  # towards max when one view shows it, towards the mean when both do
    assert fit_attention_temperature(table.assign(target=0), "prob", "target") == 1.0
    with pytest.raises(InputError, match="1 view\\(s\\) have no prob"):
        fuse_views(table.assign(prob=[np.nan] + [0.5] * (len(table) - 1)), "prob")
    with pytest.raises(ConfigError, match="'max', 'mean' or 'attention'"):
        fuse_views(table, "prob", method="median")


def test_a_view_without_laterality_or_study_is_refused_not_dropped():
    rng = np.random.default_rng(1)
    table = _views(rng, 8, positive_views=1)
    for column, blank in (("laterality", np.nan), ("laterality", ""), ("study_id", None)):
        broken = table.copy()
        broken[column] = broken[column].astype(object)
        broken.loc[3, column] = blank
        with pytest.raises(InputError, match=rf"1 view\(s\) have no {column}.*rows \[3\]"):
            fuse_views(broken, "prob", target="target")
        with pytest.raises(InputError, match=rf"1 view\(s\) have no {column}"):
            fit_attention_temperature(broken, "prob", "target")


def test_attention_temperature_refuses_unknown_targets():
    table = _views(np.random.default_rng(2), 30, positive_views=1)
    table["target"] = table["target"].astype(float)
    table.loc[5, "target"] = np.nan
    with pytest.raises(InputError, match=r"1 view\(s\) lack one \(rows \[5\]\)"):
        fit_attention_temperature(table, "prob", "target")


@pytest.mark.parametrize("grades", [[0, 7], [-1, 2], [0.0, float("nan")], [1.5, 2.0]])
def test_corn_loss_refuses_grades_outside_its_range(grades):
    logits = torch.zeros(2, 4)  # 5 grades: 0..4
    with pytest.raises(InputError, match=r"whole numbers 0..4"):
        corn_loss(logits, torch.tensor(grades))


@pytest.mark.parametrize("grade", [-1, 0, 5])
def test_at_least_refuses_a_grade_outside_1_to_k_minus_1(grade):
    probabilities = torch.full((3, 5), 0.2)
    with pytest.raises(InputError, match=r"grade in 1..K-1"):
        ClassificationTask.at_least(probabilities, grade)
    assert ClassificationTask.at_least(probabilities, 4).tolist() == pytest.approx([0.2] * 3)


@pytest.mark.parametrize(
    ("kind", "classes", "grade"),
    [("binary", ("no", "yes"), None), ("multiclass", ("a", "b", "c"), None), ("ordinal", tuple("01234"), 2),
     ("ordinal", tuple("01234"), None), ("multilabel", ("effusion", "nodule"), None)],
)  # fmt: skip
def test_metric_names_are_what_score_returns(kind, classes, grade):
    task = ClassificationTask(kind, classes, referable_grade=grade)
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(size=(40, task.num_outputs)).astype(np.float32))
    if kind == "multilabel":
        targets = torch.from_numpy(rng.integers(0, 2, size=(40, len(classes))).astype(np.float32))
    else:
        targets = torch.from_numpy(rng.integers(0, 2 if kind == "binary" else len(classes), size=40).astype(np.float32))
    scored = task.score(logits, targets)
    assert tuple(scored) == task.metric_names()


def test_breast_and_exam_intervals_resample_patients_not_exams():
    """A woman screened in several rounds has several exams: the exam and breast AUC intervals
    resample women, as the bootstrap by patient computed here does (and not exams)."""
    from medsight.metrics import bootstrap_ci, roc_auc
    from medsight.tasks import classification_report as report

    rng = np.random.default_rng(4)
    rows = []
    for woman in range(24):
        level, rounds = rng.normal(0, 1), 3  # a woman's exams share her breasts: correlated scores
        for visit in range(rounds):
            cancer = int(woman % 4 == 0 and visit == rounds - 1)
            for side in ("L", "R"):
                sick = cancer if side == "L" else 0
                for view in ("CC", "MLO"):
                    logit = level + 1.5 * sick + rng.normal(0, 0.5)
                    rows.append({"case_id": f"w{woman}v{visit}{side}{view}", "patient_id": f"w{woman}",
                                 "study_id": f"w{woman}v{visit}", "laterality": side, "view": view, "target": sick,
                                 "prob": 1 / (1 + np.exp(-logit))})  # fmt: skip
    table = pd.DataFrame(rows)
    task = ClassificationTask("binary", ("negative", "positive"), fusion="max")
    _, details, _ = report.evaluate(task, table, table, split="test", points=["youden"], n=200)
    _, exams = fuse_views(table, "prob", target="target")
    by_woman = bootstrap_ci(roc_auc, exams["target"].to_numpy(int), exams["prob"].to_numpy(),
                            groups=exams["study_id"].str.split("v").str[0].to_numpy(), n_resamples=200)  # fmt: skip
    assert details["fused"]["exam"]["auc"] == by_woman
    by_exam = bootstrap_ci(roc_auc, exams["target"].to_numpy(int), exams["prob"].to_numpy(), n_resamples=200)
    assert details["fused"]["exam"]["auc"] != by_exam


def test_reports_carry_calibration_for_each_probability():
    from medsight.metrics.calibration import calibration_figures
    from medsight.tasks import classification_report as report

    rng = np.random.default_rng(2)
    table = pd.DataFrame({"case_id": [f"c{i}" for i in range(60)], "patient_id": [f"p{i // 2}" for i in range(60)],
                          "target_a": rng.integers(0, 2, 60).astype(float),
                          "target_b": rng.integers(0, 2, 60)})  # fmt: skip
    table["prob_a"] = (0.3 * table["target_a"] + 0.7 * rng.random(60)).clip(0, 1)
    table["prob_b"] = rng.random(60)
    table.loc[0, "target_a"] = np.nan
    task = ClassificationTask("multilabel", ("a", "b"))
    _, details, _ = report.evaluate(task, table, table, split="test", points=["youden"], n=50)
    known = table["target_a"].notna()
    calibration = details["findings"]["a"]["calibration"]
    ece, slope, intercept = calibration_figures(table.loc[known, "target_a"], table.loc[known, "prob_a"])
    assert (calibration["ece"]["estimate"], calibration["slope"]["estimate"]) == pytest.approx((ece, slope))
    assert calibration["intercept"]["estimate"] == pytest.approx(intercept)
    assert calibration["ece"]["low"] <= ece <= calibration["ece"]["high"]
    assert sum(calibration["bins"]["cases"]) == known.sum()
