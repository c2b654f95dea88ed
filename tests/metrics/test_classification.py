"""Every metric against an independent reference: scikit-learn, or the formula written out."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
    roc_curve,
)

from medsight.core import InputError
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


def _data(n=300, seed=0, separation=1.0, ties=False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    s = rng.normal(size=n) + separation * y
    if ties:
        s = np.round(s, 1)
    return y, s


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ties", [False, True])
def test_auc_and_ap_match_sklearn(seed, ties):
    y, s = _data(seed=seed, ties=ties)
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


@pytest.mark.parametrize("seed", range(40))
def test_auc_and_ap_match_sklearn_on_small_tied_and_lopsided_sets(seed):
    """The bootstrap's resamples: a few cases, many ties, one positive among many negatives."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    y = rng.random(n) < rng.uniform(0.02, 0.98)
    y[rng.integers(n)] = True
    s = rng.integers(0, int(rng.integers(1, 6)), size=n) / 4.0  # few distinct scores
    if seed % 3 == 0:
        s = rng.normal(size=n)
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    if not y.all():
        assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auc_by_pair_counting_on_a_tiny_set():
    y = np.array([0, 0, 1, 1, 1])
    s = np.array([0.1, 0.5, 0.5, 0.7, 0.2])
    pairs = [(p, q) for p in s[y == 1] for q in s[y == 0]]
    expected = np.mean([1.0 if p > q else 0.5 if p == q else 0.0 for p, q in pairs])
    assert roc_auc(y, s) == pytest.approx(expected)


def test_one_class_absent_is_nan_not_a_crash():
    assert math.isnan(roc_auc([1, 1, 1], [0.2, 0.3, 0.9]))
    assert math.isnan(average_precision([0, 0], [0.2, 0.3]))
    assert math.isnan(confusion_at([1, 1], [0.4, 0.6], 0.5)["specificity"])  # no negatives


@pytest.mark.parametrize("threshold", [-1.0, 0.0, 0.5, 1.2, 10.0])
def test_confusion_at_matches_sklearn(threshold):
    y, s = _data(seed=5)
    point = confusion_at(y, s, threshold)
    pred = (s >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    assert (point["tp"], point["fp"], point["tn"], point["fn"]) == (tp, fp, tn, fn)
    assert point["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert point["specificity"] == pytest.approx(tn / (tn + fp))
    assert point["accuracy"] == pytest.approx((tp + tn) / len(y))
    if tp + fp:
        assert point["ppv"] == pytest.approx(tp / (tp + fp))
        assert point["f1"] == pytest.approx(f1_score(y, pred))
    else:
        assert math.isnan(point["ppv"])
    if tn + fn:
        assert point["npv"] == pytest.approx(tn / (tn + fn))


def test_operating_points_match_the_roc_curve():
    y, s = _data(seed=2, ties=True)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    youden = threshold_youden(y, s)
    best = np.max(tpr - fpr)
    point = confusion_at(y, s, youden)
    assert point["sensitivity"] + point["specificity"] - 1 == pytest.approx(best)
    for target in (0.8, 0.9, 0.975, 1.0):
        t = threshold_for_sensitivity(y, s, target)
        assert confusion_at(y, s, t)["sensitivity"] >= target
        # the highest such threshold: any higher distinct score drops below the target
        higher = np.unique(s[s > t])
        if len(higher):
            assert confusion_at(y, s, higher[0])["sensitivity"] < target
        expected = tpr[tpr >= target]
        assert confusion_at(y, s, t)["sensitivity"] == pytest.approx(expected.min())
    for target in (0.8, 0.95):
        t = threshold_for_specificity(y, s, target)
        assert confusion_at(y, s, t)["specificity"] >= target
        lower = np.unique(s[s < t])
        if len(lower):
            assert confusion_at(y, s, lower[-1])["specificity"] < target


def test_operating_points_need_both_classes():
    with pytest.raises(InputError, match="both classes"):
        threshold_youden([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(InputError, match=r"\(0, 1\]"):
        threshold_for_sensitivity([0, 1], [0.1, 0.2], 1.5)


@pytest.mark.parametrize("seed", range(3))
def test_qwk_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 5, size=200)
    b = np.clip(a + rng.integers(-1, 2, size=200), 0, 4)
    assert quadratic_weighted_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b, weights="quadratic"))
    assert quadratic_weighted_kappa(a, a) == pytest.approx(1.0)


def test_qwk_formula_written_out():
    a = np.array([0, 1, 2, 4, 4, 3])
    b = np.array([0, 2, 2, 3, 4, 1])
    k = 5
    observed = np.zeros((k, k))
    for i, j in zip(a, b, strict=True):
        observed[i, j] += 1
    expected = np.outer(observed.sum(1), observed.sum(0)) / observed.sum()
    w = np.array([[(i - j) ** 2 for j in range(k)] for i in range(k)]) / (k - 1) ** 2
    reference = 1 - (w * observed).sum() / (w * expected).sum()
    assert quadratic_weighted_kappa(a, b, n_classes=5) == pytest.approx(reference)


def test_qwk_bad_and_degenerate_input():
    assert math.isnan(quadratic_weighted_kappa([2, 2], [2, 2]))
    with pytest.raises(InputError, match="integer grades"):
        quadratic_weighted_kappa([0.5, 1.0], [1.0, 1.0])
    with pytest.raises(InputError, match="equal length"):
        quadratic_weighted_kappa([1, 2], [1])


def _delong_reference(y, a, b):
    """DeLong written out with O(n^2) pair comparisons."""
    pos, neg = y == 1, y == 0

    def psi(x, z):
        return (x > z).astype(float) + 0.5 * (x == z)

    out = []
    for s in (a, b):
        pairs = psi(s[pos][:, None], s[neg][None, :])
        out.append((pairs.mean(axis=1), pairs.mean(axis=0), pairs.mean()))
    v10 = np.stack([o[0] for o in out])
    v01 = np.stack([o[1] for o in out])
    cov = np.cov(v10) / pos.sum() + np.cov(v01) / neg.sum()
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    return out[0][2], out[1][2], math.sqrt(var)


@pytest.mark.parametrize("seed", range(3))
def test_delong_matches_the_pairwise_definition(seed):
    y, a = _data(n=120, seed=seed, separation=1.2, ties=True)
    rng = np.random.default_rng(seed + 10)
    b = np.round(a + rng.normal(0, 1.0, size=len(a)), 1)
    result = delong_test(y, a, b)
    auc_a, auc_b, se = _delong_reference(y, a, b)
    assert result["auc_a"] == pytest.approx(auc_a) and result["auc_b"] == pytest.approx(auc_b)
    assert result["auc_a"] == pytest.approx(roc_auc_score(y, a))
    assert result["se"] == pytest.approx(se, rel=1e-9)
    assert 0.0 <= result["p_value"] <= 1.0


def test_delong_same_scores_and_clearly_better_scores():
    y, a = _data(n=400, seed=3, separation=2.0)
    assert delong_test(y, a, a)["p_value"] == 1.0
    noise = np.random.default_rng(1).normal(size=len(a))
    assert delong_test(y, a, noise)["p_value"] < 1e-6


def _obuchowski_reference(y, a, b, clusters):
    """Obuchowski's (1997) clustered AUC (co)variance written out from the paper's sums: pair
    kernels over all positive/negative cases, summed per cluster, (co)varied over clusters."""
    clusters = np.asarray(clusters)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    m, n = len(pos), len(neg)
    ids = sorted(set(clusters.tolist()))
    components = []
    for s in (a, b):
        kernel = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        auc = kernel.sum() / (m * n)
        v10 = np.array([kernel[clusters[pos] == c].sum() / n for c in ids])  # per cluster
        v01 = np.array([kernel[:, clusters[neg] == c].sum() / m for c in ids])
        m_i = np.array([(clusters[pos] == c).sum() for c in ids])
        n_i = np.array([(clusters[neg] == c).sum() for c in ids])
        components.append((auc, v10 - m_i * auc, v01 - n_i * auc))
    i10 = len({c for c in clusters[pos].tolist()})
    i01 = len({c for c in clusters[neg].tolist()})
    count = len(ids)

    def cov(r, t):
        (_, x_r, z_r), (_, x_t, z_t) = components[r], components[t]
        s10 = i10 / ((i10 - 1) * m) * np.sum(x_r * x_t)
        s01 = i01 / ((i01 - 1) * n) * np.sum(z_r * z_t)
        s11 = count / (count - 1) * (np.sum(x_r * z_t) + np.sum(x_t * z_r))
        return s10 / m + s01 / n + s11 / (m * n)

    return components[0][0], components[1][0], math.sqrt(cov(0, 0)), math.sqrt(cov(0, 0) + cov(1, 1) - 2 * cov(0, 1))


def _clustered_data(rng, patients=60, shared_b=True):
    """2-4 units per patient (views, breasts), the scores of a patient's units sharing a patient
    effect: correlated within the patient."""
    y, a, b, who = [], [], [], []
    for i in range(patients):
        effect, other, diseased = rng.normal(0, 1.0), rng.normal(0, 1.0), rng.random() < 0.4
        for _ in range(rng.integers(2, 5)):
            label = int(diseased and rng.random() < 0.6)
            y.append(label)
            a.append(1.2 * label + effect + rng.normal(0, 0.7))
            b.append(0.9 * label + (effect if shared_b else other) + rng.normal(0, 0.7))
            who.append(f"patient {i}")
    return np.array(y), np.round(np.array(a), 1), np.round(np.array(b), 1), np.array(who)


@pytest.mark.parametrize("seed", range(3))
def test_clustered_delong_matches_obuchowskis_sums(seed):
    y, a, b, who = _clustered_data(np.random.default_rng(seed))
    result = delong_test(y, a, b, clusters=who)
    auc_a, auc_b, se_a, se = _obuchowski_reference(y, a, b, who)
    assert result["method"] == "Obuchowski" and result["clusters"] == len(set(who))
    assert result["auc_a"] == pytest.approx(auc_a) and result["auc_b"] == pytest.approx(auc_b)
    assert result["se_a"] == pytest.approx(se_a, rel=1e-9) and result["se"] == pytest.approx(se, rel=1e-9)
    naive = delong_test(y, a, b)
    assert naive["method"] == "DeLong" and naive["auc_a"] == result["auc_a"]
    assert result["se_a"] > naive["se_a"]  # correlated units: the naive variance is too small


def test_clustered_variance_with_one_case_per_patient_is_delongs():
    y, a = _data(n=90, seed=4, separation=1.0, ties=True)
    b = np.round(a + np.random.default_rng(2).normal(0, 1.0, size=len(a)), 1)
    singletons = [f"p{i}" for i in range(len(y))]
    assert _obuchowski_reference(y, a, b, singletons)[3] == pytest.approx(_delong_reference(y, a, b)[2], rel=1e-9)
    result = delong_test(y, a, b, clusters=singletons)
    assert result["method"] == "DeLong" and result["se"] == pytest.approx(_delong_reference(y, a, b)[2], rel=1e-9)
    with pytest.raises(InputError, match="one patient per case"):
        delong_test(y, a, b, clusters=singletons[:-1])


@pytest.mark.parametrize("shared_b", [True, False])
def test_clustered_standard_errors_match_the_spread_over_simulated_studies(shared_b):
    """Over 400 simulated studies (60 patients, 2-4 correlated units each), the clustered standard
    errors of an AUC and of a difference agree with the spread of the estimates (within 12 %);
    DeLong's, treating units as independent, is too small for the AUC."""
    rng = np.random.default_rng(7)
    runs = [(delong_test(y, a, b, clusters=who), delong_test(y, a, b))
            for y, a, b, who in (_clustered_data(rng, shared_b=shared_b) for _ in range(400))]  # fmt: skip
    spread_auc = np.std([c["auc_a"] for c, _ in runs])
    spread_difference = np.std([c["difference"] for c, _ in runs])
    assert np.mean([c["se_a"] for c, _ in runs]) == pytest.approx(spread_auc, rel=0.12)
    assert np.mean([n["se_a"] for _, n in runs]) < 0.85 * spread_auc
    assert np.mean([c["se"] for c, _ in runs]) == pytest.approx(spread_difference, rel=0.12)


def test_bootstrap_by_patient_keeps_correlated_cases_together():
    rng = np.random.default_rng(0)
    values = rng.normal(size=200)
    single = bootstrap_ci(np.mean, values, n_resamples=800, seed=1)
    se = values.std(ddof=1) / math.sqrt(len(values))
    assert single["high"] - single["low"] == pytest.approx(2 * 1.96 * se, rel=0.15)
    # every patient seen four times: resampling cases would shrink the CI by half, patients must not
    repeated = np.repeat(values, 4)
    patients = np.repeat(np.arange(200), 4)
    clustered = bootstrap_ci(np.mean, repeated, groups=patients, n_resamples=800, seed=1)
    naive = bootstrap_ci(np.mean, repeated, n_resamples=800, seed=1)
    assert clustered["high"] - clustered["low"] == pytest.approx(single["high"] - single["low"], rel=0.15)
    assert naive["high"] - naive["low"] < 0.65 * (clustered["high"] - clustered["low"])


def test_bootstrap_skips_undefined_resamples_and_is_reproducible():
    y = np.array([1] + [0] * 19)
    s = np.linspace(0, 1, 20)
    a = bootstrap_ci(roc_auc, y, s, n_resamples=200, seed=4)
    b = bootstrap_ci(roc_auc, y, s, n_resamples=200, seed=4)
    assert a == b and 0 < a["n_valid"] < 200
    with pytest.raises(InputError, match="equal length"):
        bootstrap_ci(roc_auc, y, s[:-1])


# --- edge cases found by an independent recomputation (issue 7) --------------------------


def test_f1_is_zero_without_a_true_positive_as_sklearn():
    point = confusion_at([1, 1, 0, 0], [0.1, 0.2, 0.9, 0.3], 0.5)
    assert point["f1"] == 0.0 == f1_score([1, 1, 0, 0], [0, 0, 1, 0])
    # nothing called positive and no positives at all: undefined, as sklearn's zero_division=nan
    empty = confusion_at([0, 0, 0], [0.1, 0.2, 0.3], 0.5)
    assert math.isnan(empty["f1"]) and math.isnan(f1_score([0, 0, 0], [0, 0, 0], zero_division=np.nan))
    # positives, nothing called positive: 0, not nan
    assert confusion_at([1, 0], [0.1, 0.2], 0.5)["f1"] == 0.0


@pytest.mark.parametrize("seed", range(20))
def test_f1_matches_sklearn_on_small_sets(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=6)
    s = rng.random(6)
    pred = (s >= 0.5).astype(int)
    expected = f1_score(y, pred, zero_division=np.nan)
    got = confusion_at(y, s, 0.5)["f1"]
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


def test_f1_bootstrap_keeps_the_resamples_without_a_true_positive():
    """Dropping F1 = 0 resamples (as a NaN F1 did) shifted the interval upwards."""
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1, 0, 1])
    s = np.array([0.6, 0.2, 0.3, 0.7, 0.1, 0.2, 0.4, 0.1, 0.55, 0.3])

    def f1(yy, ss):
        return confusion_at(yy, ss, 0.5)["f1"]

    ci = bootstrap_ci(f1, y, s, n_resamples=500, seed=0)
    reference = []
    rng = np.random.default_rng(0)
    for _ in range(500):
        index = rng.integers(0, len(y), size=len(y))
        reference.append(f1_score(y[index], (s[index] >= 0.5).astype(int), zero_division=np.nan))
    reference = np.array(reference)
    defined = reference[~np.isnan(reference)]
    assert ci["low"] == pytest.approx(np.percentile(defined, 2.5)) and ci["low"] == 0.0
    assert ci["n_undefined"] == int(np.isnan(reference).sum()) and ci["n_valid"] == len(defined)


def test_bootstrap_reports_and_warns_about_undefined_resamples(caplog):
    y = np.array([1] + [0] * 19)
    s = np.linspace(0, 1, 20)
    with caplog.at_level("WARNING"):
        ci = bootstrap_ci(roc_auc, y, s, n_resamples=200, seed=4)
    assert ci["n_undefined"] == 200 - ci["n_valid"] > 0.10 * 200
    assert "gave no defined value" in caplog.text
    caplog.clear()
    y = np.array([1] * 3 + [0] * 37)  # no positive in ~4.6 % of resamples: noted at info, no warning
    with caplog.at_level("INFO", logger="medsight.metrics.bootstrap"):
        few = bootstrap_ci(roc_auc, y, np.linspace(0, 1, 40), n_resamples=400, seed=1)
    assert 0.02 * 400 < few["n_undefined"] <= 0.10 * 400
    assert [r.levelname for r in caplog.records if "gave no defined value" in r.message] == ["INFO"]
    caplog.clear()
    with caplog.at_level("WARNING"):
        fine = bootstrap_ci(roc_auc, *_data(n=200), n_resamples=100)
    assert fine["n_undefined"] == 0 and "gave no defined value" not in caplog.text


@pytest.mark.parametrize("groups", [[None, "a", "b", "c"], [np.nan, 1.0, 2.0, 3.0], ["a", None, "b", "b"]])
def test_bootstrap_refuses_missing_patient_ids(groups):
    with pytest.raises(InputError, match=r"patient ids.*missing for 1 of 4"):
        bootstrap_ci(np.mean, [1.0, 2.0, 3.0, 4.0], groups=groups)


def test_bootstrap_accepts_mixed_type_patient_ids():
    ci = bootstrap_ci(np.mean, [1.0, 2.0, 3.0, 4.0], groups=np.array([1, "1", "b", 2], dtype=object))
    assert ci["estimate"] == 2.5


def test_confusion_at_refuses_a_nan_threshold():
    with pytest.raises(InputError, match="threshold must be a finite number"):
        confusion_at([0, 1], [0.2, 0.8], float("nan"))


def _youden_reference(y, s):
    """Brute force with exact fractions: the highest threshold of maximal J."""
    from fractions import Fraction

    best, chosen = None, None
    candidates = sorted({*s.tolist(), np.nextafter(s.max(), np.inf)})
    for t in candidates:
        pred = s >= t
        tp, tn = int(np.sum(pred & (y == 1))), int(np.sum(~pred & (y == 0)))
        j = Fraction(tp, int(y.sum())) + Fraction(tn, int((y == 0).sum())) - 1
        if best is None or j >= best:
            best, chosen = j, t
    return chosen


@pytest.mark.parametrize("seed", range(300))
def test_youden_tie_break_on_exact_counts(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(4, 14))
    y = rng.integers(0, 2, size=n)
    y[:2] = [0, 1]
    s = np.round(rng.random(n), 1)
    assert threshold_youden(y, s) == _youden_reference(y, s)


def test_qwk_refuses_grades_outside_the_classes():
    with pytest.raises(InputError, match=r"outside 0..4.*\[5\]"):
        quadratic_weighted_kappa([0, 1, 5], [0, 1, 4], n_classes=5)
    with pytest.raises(InputError, match=r"y_pred holds 1 grade\(s\) outside 0..4"):
        quadratic_weighted_kappa([0, 1, 2], [0, 1, -1], n_classes=5)
    with pytest.raises(InputError, match=r"integer grades.*type"):
        quadratic_weighted_kappa(["a", "b"], ["a", "b"])
    with pytest.raises(InputError, match="integer grades"):
        quadratic_weighted_kappa([0.0, float("nan")], [0, 1])


def test_qwk_without_n_classes_counts_an_absent_grade_as_a_step():
    a = np.array([0, 1, 3, 3, 1, 0])
    b = np.array([0, 3, 3, 1, 1, 0])  # grade 2 used by neither rater
    reference = cohen_kappa_score(a, b, labels=[0, 1, 2, 3], weights="quadratic")
    assert quadratic_weighted_kappa(a, b) == pytest.approx(reference)
    assert quadratic_weighted_kappa(a, b, n_classes=4) == pytest.approx(reference)
    assert reference != pytest.approx(cohen_kappa_score(a, b, weights="quadratic"))  # sklearn's default differs


@pytest.mark.parametrize("labels", [[1, 0, 0, 0], [0, 1, 1, 1], [0, 1]])
def test_delong_refuses_a_class_with_one_case(labels):
    with pytest.raises(InputError, match="at least two cases of each class"):
        delong_test(labels, np.linspace(0, 1, len(labels)), np.linspace(1, 0, len(labels)))
