"""Referral curves against a brute-force reference (scikit-learn's AUC on the kept cases)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medsight.core.errors import InputError
from medsight.metrics.referral import DEFAULT_RATES, ambiguity, referral_curve, referral_curve_ci


def _reference(labels, scores, uncertainty, rate):
    n = len(labels)
    referred = set(sorted(range(n), key=lambda i: (-uncertainty[i], i))[: round(rate * n)])
    kept = [i for i in range(n) if i not in referred]
    y = labels[kept]
    return roc_auc_score(y, scores[kept]) if len(set(y.tolist())) == 2 else float("nan")


@pytest.mark.parametrize("seed", range(4))
def test_referral_curve_matches_a_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    n = 60
    labels = rng.integers(0, 2, n)
    scores = np.clip(labels * 0.3 + rng.normal(0.35, 0.25, n), 0, 1)
    uncertainty = rng.integers(0, 5, n).astype(float)  # ties: referred in case order
    found = referral_curve(labels, scores, uncertainty)
    expected = [_reference(labels, scores, uncertainty, r) for r in DEFAULT_RATES]
    np.testing.assert_allclose(found, expected, equal_nan=True)


def test_referring_the_errors_first_raises_the_auc_and_one_class_left_is_undefined():
    labels = np.array([0, 0, 0, 1, 1, 1, 0, 1, 0, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9, 0.7, 0.95, 0.05, 0.4, 0.6])  # cases 6 and 7 are wrong
    wrong_first = np.zeros(10)
    wrong_first[[6, 7]] = 1.0
    curve = referral_curve(labels, scores, wrong_first, rates=(0.0, 0.2))
    assert curve[0] < 1.0 and curve[1] == 1.0
    assert np.isnan(referral_curve(np.array([0, 0, 1]), np.array([0.1, 0.2, 0.9]), np.array([0, 0, 1.0]),
                                   rates=(0.34,))[0])  # fmt: skip


def test_ambiguity_is_one_at_a_coin_toss_and_zero_when_certain():
    np.testing.assert_allclose(ambiguity(np.array([0.0, 0.25, 0.5, 0.75, 1.0])), [0, 0.5, 1, 0.5, 0])


def test_the_ci_resamples_patients_and_carries_the_rates():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 80)
    scores = np.clip(labels * 0.4 + rng.normal(0.3, 0.2, 80), 0, 1)
    spread = rng.random(80)
    patients = np.repeat(np.arange(40), 2)
    blocks = referral_curve_ci(labels, scores, spread, groups=patients, n_resamples=50)
    assert [b["rate"] for b in blocks] == list(DEFAULT_RATES)
    plain = referral_curve(labels, scores, spread)
    for block, value in zip(blocks, plain, strict=True):
        assert block["estimate"] == pytest.approx(value) and block["low"] <= value <= block["high"]


def test_bad_inputs_are_named():
    with pytest.raises(InputError, match="differ in length"):
        referral_curve(np.zeros(3), np.zeros(3), np.zeros(2))
    with pytest.raises(InputError, match="NaN"):
        referral_curve(np.zeros(2), np.zeros(2), np.array([0.1, np.nan]))
    with pytest.raises(InputError, match=r"\[0, 1\)"):
        referral_curve(np.zeros(2), np.zeros(2), np.zeros(2), rates=(1.0,))
