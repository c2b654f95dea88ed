"""Survival discrimination against scikit-survival (an independent implementation) and by hand, on
random cohorts with tied times and risks, and on edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from medsight.core.errors import InputError
from medsight.metrics.survival import censoring_survival, cumulative_dynamic_auc, harrell_c, kaplan_meier, uno_c

sksurv_metrics = pytest.importorskip("sksurv.metrics", reason="scikit-survival (dev extra) is the reference")
from sksurv.nonparametric import kaplan_meier_estimator  # noqa: E402
from sksurv.util import Surv  # noqa: E402


def _cohort(seed: int, n: int = 120, ties: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    event_time = rng.exponential(np.exp(-risk) * 5)
    censor_time = rng.exponential(6, n)
    time = np.minimum(event_time, censor_time)
    event = event_time <= censor_time
    if ties:
        time = np.ceil(time)  # whole months: many tied times, events and censorings at the same time
        risk = np.round(risk + rng.normal(0, 0.5, n), 1)  # tied risk scores
    return time, event, risk


@pytest.mark.parametrize("seed", range(5))
def test_harrell_c_matches_scikit_survival(seed):
    time, event, risk = _cohort(seed)
    expected = sksurv_metrics.concordance_index_censored(event, time, risk)[0]
    assert harrell_c(time, event, risk) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_uno_c_matches_scikit_survival_with_and_without_tau(seed):
    time, event, risk = _cohort(seed)
    train_time, train_event, _ = _cohort(seed + 100, n=300)
    train = Surv.from_arrays(train_event, train_time)
    # scikit-survival evaluates G on the training times: test times beyond them are cut by tau
    tau = float(min(train_time.max(), time.max()))
    test_mask = time < tau
    test = Surv.from_arrays(event, time)
    expected = sksurv_metrics.concordance_index_ipcw(train, test, risk, tau=tau)[0]
    found = uno_c(time, event, risk, train_time=train_time, train_event=train_event, tau=tau)
    assert found == pytest.approx(expected, abs=1e-10)
    assert test_mask.any()
    same = sksurv_metrics.concordance_index_ipcw(test, test, risk, tau=float(time.max()))[0]
    assert uno_c(time, event, risk, tau=float(time.max())) == pytest.approx(same, abs=1e-10)


@pytest.mark.parametrize("seed", range(4))
def test_cumulative_dynamic_auc_matches_scikit_survival(seed):
    time, event, risk = _cohort(seed)
    train_time, train_event, _ = _cohort(seed + 50, n=300)
    inside = time <= train_time.max()  # scikit-survival refuses test times past the training follow-up
    time, event, risk = time[inside], event[inside], risk[inside]
    times = np.array([2.0, 3.0, 5.0])
    expected, expected_mean = sksurv_metrics.cumulative_dynamic_auc(
        Surv.from_arrays(train_event, train_time), Surv.from_arrays(event, time), risk, times
    )
    found, mean = cumulative_dynamic_auc(time, event, risk, times, train_time=train_time, train_event=train_event)
    np.testing.assert_allclose(found, expected, atol=1e-10)
    assert mean == pytest.approx(expected_mean, abs=1e-10)
    one, single = cumulative_dynamic_auc(time, event, risk, [3.0])
    assert single == pytest.approx(one[0])


def test_kaplan_meier_and_the_censoring_distribution_match_scikit_survival():
    time, event, _ = _cohort(3)
    times, survival = kaplan_meier(time, event)
    ref_times, ref = kaplan_meier_estimator(event, time)
    np.testing.assert_allclose(times, ref_times)
    np.testing.assert_allclose(survival, ref)
    g = censoring_survival(time, event)
    ref_times, ref = kaplan_meier_estimator(event, time, reverse=True)
    np.testing.assert_allclose(g(ref_times), ref)
    assert g(np.array([-1.0]))[0] == 1.0


def test_concordance_by_hand():
    # subject 0 dies first (t=1), 1 is censored at 1 (comparable with 0: censored after the death),
    # 2 dies at 3, 3 is censored at 2 (not comparable with 2: its order is unknown)
    time, event = np.array([1.0, 1.0, 3.0, 2.0]), np.array([1, 0, 1, 0])
    # comparable pairs: (0,1), (0,2), (0,3); 2 vs nobody later. Risks order all three right:
    assert harrell_c(time, event, [4, 1, 2, 3]) == 1.0
    assert harrell_c(time, event, [1, 4, 2, 3]) == 0.0
    assert harrell_c(time, event, [2, 2, 1, 1]) == pytest.approx((0.5 + 1 + 1) / 3)  # one tie counts half
    assert harrell_c(time, event, [4, 4, 4, 4]) == 0.5


def test_edge_cases_are_defined_or_named():
    assert np.isnan(harrell_c([1, 2, 3], [0, 0, 0], [1, 2, 3]))  # no event: no comparable pair
    assert harrell_c([1, 2, 3], [1, 1, 1], [3, 2, 1]) == 1.0  # every subject had the event
    assert np.isnan(harrell_c([5.0], [1], [0.3]))  # one subject
    with pytest.raises(InputError, match="differ in length"):
        harrell_c([1, 2], [1], [1, 2])
    with pytest.raises(InputError, match="risk scores hold NaN"):
        harrell_c([1, 2], [1, 0], [np.nan, 1])
    with pytest.raises(InputError, match="must be finite"):
        harrell_c([1, np.nan], [1, 0], [1, 2])
    with pytest.raises(InputError, match="0/1"):
        harrell_c([1, 2], [1, 2], [1, 2])
    with pytest.raises(InputError, match="negative"):
        harrell_c([-1, 2], [1, 0], [1, 2])
    with pytest.raises(InputError, match="within the follow-up"):
        cumulative_dynamic_auc([1, 2, 3], [1, 1, 0], [1, 2, 3], [10.0])
    with pytest.raises(InputError, match="increasing"):
        cumulative_dynamic_auc([1, 2, 3], [1, 1, 0], [1, 2, 3], [2.0, 1.0])
    with pytest.raises(InputError, match="tau"):  # the last subject is censored: G(t) = 0 from then on
        uno_c([1, 2, 3, 3], [0, 1, 0, 1], [1, 2, 3, 4], train_time=[1, 2], train_event=[1, 0])
