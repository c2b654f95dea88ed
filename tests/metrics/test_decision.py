"""Decision curves against a net benefit counted case by case."""

from __future__ import annotations

import numpy as np
import pytest

from medsight.core.errors import InputError
from medsight.metrics.decision import net_benefit, net_benefit_all


@pytest.mark.parametrize("seed", range(3))
def test_net_benefit_counts_true_and_false_positives_case_by_case(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    p = np.round(np.clip(0.3 * y + 0.7 * rng.random(200), 0, 1), 2)  # ties at the thresholds too
    thresholds = [0.05, 0.2, 0.5, 0.51, 0.9]
    for t, value in zip(thresholds, net_benefit(y, p, thresholds), strict=True):
        expected = 0.0
        for label, prob in zip(y, p, strict=True):
            if prob >= t:
                expected += (1.0 if label == 1 else -t / (1 - t)) / len(y)
        assert value == pytest.approx(expected)
    everyone = net_benefit_all(y, thresholds)
    assert everyone == pytest.approx(net_benefit(y, np.ones(200), thresholds))  # acting on all: p = 1
    assert net_benefit(y, np.zeros(200), thresholds) == pytest.approx(np.zeros(5))  # acting on none


def test_a_perfect_model_gains_the_prevalence_and_bad_input_is_refused():
    y = np.array([0, 0, 0, 1])
    assert net_benefit(y, y.astype(float), [0.3, 0.7]) == pytest.approx([0.25, 0.25])
    with pytest.raises(InputError, match="strictly between 0 and 1"):
        net_benefit(y, y.astype(float), [0.0, 0.5])
    with pytest.raises(InputError, match="within"):
        net_benefit(y, [0.1, 0.2, 1.5, 0.3])
    with pytest.raises(InputError, match="0/1"):
        net_benefit_all([0, 2])
