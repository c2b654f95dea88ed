"""Calibration figures against independent references: sklearn's unpenalised logistic regression
(slope), a likelihood maximised by scipy (intercept), and bins counted by hand (ECE)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize
from sklearn.linear_model import LogisticRegression

from medsight.core.errors import InputError
from medsight.metrics.calibration import (
    calibration_figures,
    calibration_intercept,
    calibration_slope,
    expected_calibration_error,
    reliability_bins,
)


def _cases(seed: int, n: int = 400, sharpen: float = 1.0, shift: float = 0.0):
    """Outcomes drawn from true risks; predictions the risks made more extreme (``sharpen``) or moved."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(-0.5, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return y, 1 / (1 + np.exp(-(sharpen * logit + shift)))


def _logit(p):
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


@pytest.mark.parametrize("seed", range(4))
def test_slope_matches_an_unpenalised_logistic_regression(seed):
    y, p = _cases(seed, sharpen=[1.0, 2.0, 0.5, 1.3][seed])
    reference = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(_logit(p)[:, None], y)
    assert calibration_slope(y, p) == pytest.approx(reference.coef_[0, 0], rel=1e-5)


@pytest.mark.parametrize("shift", [0.0, 0.8, -1.2])
def test_intercept_maximises_the_likelihood_with_the_slope_held_at_one(shift):
    y, p = _cases(7, shift=shift)
    offset = _logit(p)

    def loss(a):
        z = a + offset
        return float(np.sum(np.logaddexp(0, z) - y * z))

    reference = optimize.minimize_scalar(loss, bounds=(-10, 10), method="bounded", options={"xatol": 1e-10}).x
    assert calibration_intercept(y, p) == pytest.approx(reference, abs=1e-6)
    assert np.sign(calibration_intercept(y, p)) == -np.sign(shift) or shift == 0.0  # predicted too high: below 0


def test_a_calibrated_model_has_slope_one_intercept_zero_and_a_small_ece():
    y, p = _cases(3, n=20_000)
    ece, slope, intercept = calibration_figures(y, p)
    assert slope == pytest.approx(1.0, abs=0.05) and intercept == pytest.approx(0.0, abs=0.05) and ece < 0.02
    _, sharp_slope, _ = calibration_figures(*_cases(3, n=20_000, sharpen=2.0))
    assert sharp_slope == pytest.approx(0.5, abs=0.05)  # overconfident predictions: slope below 1


def test_ece_and_bins_counted_by_hand():
    y = np.array([0, 0, 1, 1, 1, 0, 1, 0])
    p = np.array([0.05, 0.15, 0.12, 0.55, 0.58, 0.95, 1.0, 0.5])
    table = reliability_bins(y, p, bins=10)
    assert table["cases"] == [1, 2, 3, 2] and table["low"] == pytest.approx([0.0, 0.1, 0.5, 0.9])
    # bins: [0.05] -> 0; [0.15, 0.12] -> 1/2; [0.55, 0.58, 0.5] -> 2/3; [0.95, 1.0] -> 1/2
    expected = (abs(0 - 0.05) + 2 * abs(0.5 - 0.135) + 3 * abs(2 / 3 - 0.5433333) + 2 * abs(0.5 - 0.975)) / 8
    assert expected_calibration_error(y, p, bins=10) == pytest.approx(expected, abs=1e-6)
    assert expected_calibration_error(y, p, bins=1) == pytest.approx(abs(y.mean() - p.mean()))


def test_edge_cases_are_undefined_or_refused():
    assert math.isnan(calibration_slope([1, 1, 1], [0.2, 0.5, 0.9]))  # one class
    assert math.isnan(calibration_intercept([0, 0], [0.2, 0.5]))
    assert math.isnan(calibration_slope([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]))  # separated: the fit diverges
    assert not math.isnan(calibration_intercept([0, 0, 1, 1], [0.0, 0.2, 0.8, 1.0]))  # 0 and 1 are clipped
    assert expected_calibration_error([1, 0], [1.0, 0.0]) == 0.0
    with pytest.raises(InputError, match="within \\[0, 1\\]"):
        expected_calibration_error([0, 1], [0.2, 1.3])
    with pytest.raises(InputError, match="finite"):
        calibration_slope([0, 1], [np.nan, 0.3])
    with pytest.raises(InputError, match="0/1"):
        calibration_slope([0, 2], [0.1, 0.3])
    with pytest.raises(InputError, match="empty"):
        reliability_bins([], [])


def _nll_sigmoid(y, p, t):
    z = np.log(np.clip(p, 1e-6, 1 - 1e-6) / (1 - np.clip(p, 1e-6, 1 - 1e-6))) / t
    return np.mean(np.logaddexp(0, z) - y * z)


def test_temperature_scaling_recovers_an_overconfident_models_temperature():
    from medsight.metrics.calibration import apply_temperature, fit_temperature

    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, 20000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-z))).astype(int)
    overconfident = 1 / (1 + np.exp(-2 * z))  # logits twice too large
    fitted = fit_temperature(y, overconfident)
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 4001))  # brute-force reference
    best = grid[np.argmin([_nll_sigmoid(y, overconfident, t) for t in grid])]
    assert fitted == pytest.approx(best, rel=2e-3) and fitted == pytest.approx(2.0, rel=0.08)
    scaled = apply_temperature(overconfident, fitted)
    assert np.argsort(scaled, kind="stable").tolist() == np.argsort(overconfident, kind="stable").tolist()
    np.testing.assert_allclose(scaled, 1 / (1 + np.exp(-2 * z / fitted)), atol=1e-6)
    np.testing.assert_allclose(apply_temperature(np.array([0.2, 0.7]), 1.0), [0.2, 0.7])


def test_softmax_temperature_keeps_the_most_probable_class():
    from medsight.metrics.calibration import apply_temperature, fit_temperature

    rng = np.random.default_rng(1)
    logits = rng.normal(0, 1.2, (6000, 3))
    truth = np.array([rng.choice(3, p=np.exp(r) / np.exp(r).sum()) for r in logits])
    sharp = np.exp(3 * logits) / np.exp(3 * logits).sum(1, keepdims=True)
    fitted = fit_temperature(truth, sharp, softmax=True)
    assert fitted == pytest.approx(3.0, rel=0.1)
    scaled = apply_temperature(sharp, fitted, softmax=True)
    np.testing.assert_allclose(scaled.sum(1), 1.0)
    assert (scaled.argmax(1) == sharp.argmax(1)).all()


def test_temperature_refuses_what_it_cannot_fit():
    from medsight.metrics.calibration import apply_temperature, fit_temperature

    with pytest.raises(InputError, match="both outcomes"):
        fit_temperature(np.zeros(5), np.linspace(0.1, 0.9, 5))
    with pytest.raises(InputError, match="0 or 1"):
        fit_temperature(np.array([0, 2, 1]), np.array([0.1, 0.5, 0.9]))
    with pytest.raises(InputError, match="positive"):
        apply_temperature(np.array([0.5]), 0.0)
    with pytest.raises(InputError, match="labels for"):
        fit_temperature(np.array([0, 1]), np.array([0.5]))
