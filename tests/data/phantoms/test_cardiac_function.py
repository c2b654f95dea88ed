"""Cardiac phantom: ACDC layout; the EF measured on the written masks equals the intended EF;
the myocardium keeps its mass through the beat; the simulated outcome follows EF."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medsight.data import build_manifest
from medsight.data.phantoms import make_phantom
from medsight.io import read


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp("card") / "acdc"
    make_phantom("cardiac-function", out, cases=30, seed=6)
    return out


def test_acdc_layout_read_back(made):
    m = build_manifest(made)
    assert m.info["dataset"] == "acdc" and len(m) == 30
    assert set(m.table["group"]) <= {"NOR", "MINF", "DCM", "HCM", "RV"}
    cine = read(m.paths(0)["image_cine"])
    ed = read(m.paths(0)["image_ed"])
    assert cine.channels == m.table["nbframe"].iloc[0] and cine.spatial_shape == ed.spatial_shape
    np.testing.assert_array_equal(cine.array[0], ed.array[0])  # frame 1 of the cine is the ED frame


def test_ef_from_written_masks_matches_intended(made):
    m = build_manifest(made)
    truth = pd.read_csv(made / "phantom_truth.csv").set_index("patient")
    for i in range(len(m)):
        ed, es = read(m.paths(i)["label_ed"]), read(m.paths(i)["label_es"])
        assert set(np.unique(ed.array)) <= {0, 1, 2, 3}
        voxel_ml = float(np.prod(ed.geometry.spacing)) / 1000
        edv, esv = (ed.array == 3).sum() * voxel_ml, (es.array == 3).sum() * voxel_ml
        ef = (edv - esv) / edv
        expected = truth.loc[m.table["case_id"].iloc[i]]
        assert abs(ef - expected["ef_intended"]) < 0.02
        assert edv == pytest.approx(expected["edv_ml"], abs=0.01)  # the truth table rounds to 0.01 ml
        myo_ed, myo_es = (ed.array == 2).sum(), (es.array == 2).sum()
        assert abs(myo_es - myo_ed) / myo_ed < 0.12  # the muscle keeps its volume


def test_groups_have_their_physiology(made):
    truth = pd.read_csv(made / "phantom_truth.csv")
    by_group = truth.groupby("group")["ef_masks"].mean()
    if {"DCM", "NOR"} <= set(by_group.index):
        assert by_group["DCM"] < 0.4 < 0.55 < by_group["NOR"]
    if "HCM" in by_group.index:
        assert by_group["HCM"] > 0.6


def test_outcome_hazard_rises_as_ef_falls(made):
    truth = pd.read_csv(made / "phantom_truth.csv")
    # Harrell's C of the risk score -EF against (years, event), written out as the definition
    risk, years, event = -truth["ef_masks"].to_numpy(), truth["years"].to_numpy(), truth["event"].to_numpy()
    concordant = comparable = 0.0
    for i in range(len(truth)):
        for j in range(len(truth)):
            if event[i] and years[i] < years[j]:
                comparable += 1
                concordant += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0
    assert comparable > 0 and concordant / comparable > 0.6


def test_the_clinical_table_joins_the_manifest_by_patient(made):
    from medsight.data.join import join_table

    clinical = pd.read_csv(made / "clinical.csv", dtype={"patient_id": str})
    truth = pd.read_csv(made / "phantom_truth.csv").set_index("patient")
    assert list(clinical.columns) == ["patient_id", "age", "sex", "hypertension", "diabetes", "years", "event"]
    joined = join_table(build_manifest(made), clinical)
    assert joined.on == "patient_id" and joined.matched == 30 and not joined.unmatched_cases
    table = joined.manifest.table.set_index("case_id")
    for column in ("age", "years", "event", "sex"):
        assert table.loc[truth.index, column].tolist() == truth[column].tolist()


def test_masks_do_not_depend_on_what_was_drawn_before():
    """_Heart keeps each slice's geometry after the first drawing: any contraction drawn after others
    equals it drawn first, on a heart made from the same random stream (a scarred one included)."""
    from medsight.data.phantoms.base import case_rng
    from medsight.data.phantoms.cardiac_function import _Heart

    for group in ("NOR", "MINF"):
        fresh, used = _Heart(case_rng(2, 7), group, 10), _Heart(case_rng(2, 7), group, 10)
        for c in (1.0, 0.0, 0.55):
            used.masks(c)
        for c in (0.3, 1.0):
            np.testing.assert_array_equal(used.masks(c), _Heart(case_rng(2, 7), group, 10).masks(c))
        assert (fresh.masks(0.0) == 3).sum() > (fresh.masks(1.0) == 3).sum() > 0  # the cavity empties


def test_without_the_cine_only_the_labelled_frames_are_written_and_read(tmp_path):
    """``cine=False`` (the demo's risk cohort): no 4D file, the ED and ES frames and masks as with the
    cine, and the ACDC reader lists them without a cine column rather than a path to a missing file."""
    out = tmp_path / "acdc"
    make_phantom("cardiac-function", out, cases=6, seed=3, options={"cine": False})
    assert not list(out.rglob("*_4d.nii.gz"))
    m = build_manifest(out)
    assert len(m) == 6 and "image_cine" not in m.table.columns
    truth = pd.read_csv(out / "phantom_truth.csv").set_index("patient")
    for i in range(len(m)):
        paths = m.paths(i)
        image, ed, es = read(paths["image_ed"]), read(paths["label_ed"]), read(paths["label_es"])
        assert image.spatial_shape == ed.spatial_shape and image.array.std() > 0
        edv, esv = (ed.array == 3).sum(), (es.array == 3).sum()
        assert (edv - esv) / edv == pytest.approx(truth.loc[m.table["case_id"].iloc[i], "ef_masks"], abs=1e-3)


def test_an_option_given_as_text_is_taken_as_its_defaults_type(tmp_path):
    """``--option cine=false`` reaches the phantom as the text "false": it means no cine (a plain
    ``bool("false")`` would be True), and a word that is neither is refused before anything is written."""
    from medsight.core import ConfigError

    make_phantom("cardiac-function", tmp_path / "text", cases=2, seed=3, options={"cine": "false"})
    assert not list((tmp_path / "text").rglob("*_4d.nii.gz")) and len(list((tmp_path / "text").rglob("*_gt.nii.gz")))
    with pytest.raises(ConfigError, match="cine must be true or false"):
        make_phantom("cardiac-function", tmp_path / "bad", cases=2, seed=3, options={"cine": "maybe"})
    assert not (tmp_path / "bad").exists()
