from __future__ import annotations

import numpy as np
import pytest

from medsight.core import Geometry, InputError, Volume


def test_volume_shapes_and_range():
    arr = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    arr[0, 0, 0, 0] = np.nan
    v = Volume(arr, Geometry())
    assert v.channels == 2
    assert v.spatial_shape == (3, 4, 5)
    assert not v.is_2d
    assert v.intensity_range() == (1.0, 119.0)


@pytest.mark.parametrize("shape", [(4, 5), (3, 4, 5), (1, 1, 2, 3, 4)])
def test_volume_requires_four_axes(shape):
    with pytest.raises(InputError, match=r"4D \(C, Z, Y, X\)"):
        Volume(np.zeros(shape), Geometry())


def test_volume_rejects_empty_and_non_arrays():
    with pytest.raises(InputError, match="empty axis"):
        Volume(np.zeros((1, 0, 2, 2)), Geometry())
    with pytest.raises(InputError, match="numpy array"):
        Volume([[1]], Geometry())  # type: ignore[arg-type]


def test_with_array_keeps_geometry_and_checks_shape():
    v = Volume(np.zeros((1, 2, 3, 4), np.int16), Geometry(spacing=(2, 1, 1)))
    w = v.with_array(np.ones((3, 2, 3, 4), np.uint8))
    assert w.geometry is v.geometry and w.channels == 3
    with pytest.raises(InputError, match="spatial shape"):
        v.with_array(np.ones((1, 2, 3, 5)))
