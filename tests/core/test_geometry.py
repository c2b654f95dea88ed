from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from medsight.core import Geometry, GeometryError, orientation_code
from tests.conftest import oblique_direction


def _signed_permutations():
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            m = np.zeros((3, 3))
            for col, (row, sign) in enumerate(zip(perm, signs, strict=True)):
                m[row, col] = sign
            yield m


@pytest.mark.parametrize("direction", list(_signed_permutations()))
def test_orientation_code_matches_simpleitk(direction):
    # SimpleITK's direction columns are the (x, y, z) index axes; ours are (z, y, x).
    itk_direction = direction[:, ::-1].ravel().tolist()
    expected = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(itk_direction)
    assert orientation_code(direction) == expected


def test_default_geometry_is_lps_identity():
    g = Geometry()
    assert g.orientation_code == "LPS"
    assert g.index_to_world([0, 0, 0]).tolist() == [0.0, 0.0, 0.0]
    assert g.index_to_world([1, 2, 3]).tolist() == [3.0, 2.0, 1.0]


def test_index_world_round_trip_oblique():
    g = Geometry(spacing=(3.0, 0.5, 0.7), origin=(10.0, -20.0, 5.0), direction=oblique_direction(33.0))
    rng = np.random.default_rng(1)
    idx = rng.uniform(-5, 50, size=(100, 3))
    back = g.world_to_index(g.index_to_world(idx))
    np.testing.assert_allclose(back, idx, atol=1e-9)
    # the step along array axis 0 is spacing[0] mm along direction column 0
    step = g.index_to_world([1, 0, 0]) - g.index_to_world([0, 0, 0])
    np.testing.assert_allclose(step, 3.0 * g.direction_matrix[:, 0])


def test_affine_and_from_affine_agree():
    g = Geometry(spacing=(2.0, 1.0, 0.5), origin=(1.0, 2.0, 3.0), direction=oblique_direction(10.0, left_handed=True))
    assert Geometry.from_affine(g.affine).isclose(g, atol=1e-12)


def test_far_corner_matches_simpleitk():
    g = Geometry(spacing=(3.0, 0.5, 0.7), origin=(10.0, -20.0, 5.0), direction=oblique_direction(12.0))
    img = sitk.Image(40, 30, 20, sitk.sitkUInt8)  # x, y, z sizes
    img.SetSpacing(g.spacing[::-1])
    img.SetOrigin(g.origin)
    img.SetDirection(g.direction_matrix[:, ::-1].ravel().tolist())
    expected = img.TransformIndexToPhysicalPoint((39, 29, 19))
    np.testing.assert_allclose(g.far_corner((20, 30, 40)), expected, atol=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spacing": (1.0, 0.0, 1.0)}, "spacing must be positive"),
        ({"spacing": (1.0, np.nan, 1.0)}, "3 finite numbers"),
        ({"origin": (1.0, 2.0)}, "origin must be 3"),
        ({"direction": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.5, 0.0, 1.0))}, "orthonormal"),
        ({"direction": ((1.0, 0.0), (0.0, 1.0))}, "3x3"),
    ],
)
def test_invalid_geometry_is_rejected(kwargs, message):
    with pytest.raises(GeometryError, match=message):
        Geometry(**kwargs)


def test_to_dict_is_json_ready():
    import json

    d = Geometry(spacing=(2.0, 1.0, 1.0), frame_of_reference_uid="1.2.3").to_dict()
    assert json.loads(json.dumps(d))["orientation"] == "LPS"
    assert d["frame_of_reference_uid"] == "1.2.3"
