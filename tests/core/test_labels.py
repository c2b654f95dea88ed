from __future__ import annotations

import json

import numpy as np
import pytest

from medsight.core import CodedConcept, ConfigError, InputError, LabelClass, LabelSchema


@pytest.fixture
def brats() -> LabelSchema:
    return LabelSchema(
        classes=(
            LabelClass(1, "NCR", (255, 0, 0), CodedConcept("86049000", "SCT", "Necrosis")),
            LabelClass(2, "ED", (0, 255, 0)),
            LabelClass(4, "ET", (0, 0, 255)),
        ),
        regions={"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)},
    )


def test_regions_nest(brats):
    rng = np.random.default_rng(0)
    mask = rng.choice([0, 1, 2, 4], size=(8, 8, 8))
    wt, tc, et = (brats.region_mask(mask, r) for r in ("WT", "TC", "ET"))
    assert np.all(et <= tc) and np.all(tc <= wt)
    assert wt.sum() == np.count_nonzero(mask)
    assert np.array_equal(brats.region_mask(mask, "ED"), mask == 2)


def test_lookup_and_validation(brats):
    assert brats.code_of("ET") == 4 and brats.name_of(2) == "ED"
    brats.validate_mask(np.array([0, 1, 2, 4]))
    with pytest.raises(InputError, match=r"values \[3\] outside the schema"):
        brats.validate_mask(np.array([0, 3, 4]))
    with pytest.raises(ConfigError, match="unknown class"):
        brats.code_of("tumour")
    with pytest.raises(ConfigError, match="unknown region"):
        brats.region_mask(np.zeros(3), "XX")


def test_round_trip_through_json(brats):
    again = LabelSchema.from_dict(json.loads(json.dumps(brats.to_dict())))
    assert again == brats or again.to_dict() == brats.to_dict()
    assert again.classes[0].concept == CodedConcept("86049000", "SCT", "Necrosis")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": ()}, "at least one"),
        ({"classes": (LabelClass(1, "a"), LabelClass(1, "b"))}, "codes must be unique"),
        ({"classes": (LabelClass(1, "a"), LabelClass(2, "a"))}, "names must be unique"),
        ({"classes": (LabelClass(0, "a"),)}, "background code"),
        ({"classes": (LabelClass(1, "a"),), "regions": {"R": (1, 7)}}, r"codes \[7\]"),
    ],
)
def test_invalid_schemas(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        LabelSchema(**kwargs)


def test_from_names_and_unknown_keys():
    s = LabelSchema.from_names(["lung", "heart"])
    assert s.codes == (1, 2) and s.names == ("lung", "heart")
    with pytest.raises(ConfigError, match="unknown LabelSchema keys"):
        LabelSchema.from_dict({"classes": [], "colour": 1})
