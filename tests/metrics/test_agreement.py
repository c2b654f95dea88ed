"""Mean absolute error and Bland-Altman limits against independent computations, with edge cases."""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from medsight.core.errors import InputError
from medsight.metrics.agreement import bland_altman, mean_absolute_error


def test_against_the_standard_library():
    rng = np.random.default_rng(0)
    reference = rng.uniform(30, 70, size=50)
    measured = reference + rng.normal(2, 4, size=50)
    differences = [float(a - b) for a, b in zip(measured, reference, strict=True)]
    assert mean_absolute_error(measured, reference) == pytest.approx(statistics.fmean(abs(d) for d in differences))
    agreement = bland_altman(measured, reference)
    bias, sd = statistics.fmean(differences), statistics.stdev(differences)
    assert (agreement.bias, agreement.lower, agreement.upper, agreement.n) == pytest.approx(
        (bias, bias - 1.96 * sd, bias + 1.96 * sd, 50)
    )


def test_missing_pairs_are_left_out_and_tiny_samples_are_undefined():
    assert mean_absolute_error([1.0, np.nan, 5.0], [2.0, 3.0, np.nan]) == 1.0
    one = bland_altman([1.0, np.nan], [3.0, 1.0])
    assert one.bias == -2.0 and np.isnan(one.lower) and one.n == 1
    none = bland_altman([np.nan], [1.0])
    assert np.isnan(none.bias) and none.n == 0 and np.isnan(mean_absolute_error([np.nan], [1.0]))
    same = bland_altman([2.0, 2.0], [1.0, 1.0])
    assert (same.bias, same.lower, same.upper) == (1.0, 1.0, 1.0)  # identical differences: no spread


def test_bad_inputs_are_refused():
    with pytest.raises(InputError, match="2 measurements for 3 references"):
        bland_altman([1, 2], [1, 2, 3])
    with pytest.raises(InputError, match="finite"):
        mean_absolute_error([np.inf], [1.0])
