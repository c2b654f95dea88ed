"""Mammography phantom: VinDr layout with real DICOM, four views per exam, findings in both views
of a breast, BI-RADS consistent with pathology, MONOCHROME1 stored correctly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pydicom
import pytest
from sklearn.metrics import roc_auc_score

from medsight.data import build_manifest
from medsight.data.phantoms import make_phantom
from medsight.io import read


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp("mg") / "vindr"
    make_phantom("mammo-screening", out, cases=24, seed=5)
    return out


def test_vindr_layout_read_back(made):
    m = build_manifest(made)
    assert m.info["dataset"] == "vindr-mammo" and len(m) == 24 * 4
    views = m.table.groupby("study_id").apply(lambda t: sorted(zip(t["laterality"], t["view"], strict=True)))
    assert all(v == [("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")] for v in views)
    assert set(m.table["split"]) == {"", "test"}


def test_birads_follows_pathology_and_both_views_show_the_finding(made):
    m = build_manifest(made)
    truth = pd.read_csv(made / "phantom_truth.csv").set_index("image_id")
    table = m.table.set_index("case_id")
    for image_id, row in table.iterrows():
        t = truth.loc[image_id]
        assert row["target"] == int(t["pathology"] == "malignant")
        assert (row["target_birads"] == 1) == (t["kind"] == "none")
        has_box = isinstance(row["boxes"], str) and bool(row["boxes"])
        assert has_box == (t["kind"] != "none")
    assert table["target"].sum() > 0


def test_dicom_files_are_mammograms_and_monochrome1_is_inverted(made):
    m = build_manifest(made)
    photometric = set()
    for i in range(0, len(m), 4):
        path = m.paths(i)["image"]
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.Modality == "MG" and ds.ImageLaterality in ("L", "R")
        photometric.add(ds.PhotometricInterpretation)
        v = read(path, invert_monochrome1=True)
        breast = v.array[0, 0]
        # whatever the storage, the breast is bright and the background dark once displayed
        assert np.percentile(breast, 90) > 800
        assert min(breast[0, 0], breast[0, -1], breast[-1, 0], breast[-1, -1]) < 150
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}


def test_malignancy_is_not_in_the_global_statistics(made):
    m = build_manifest(made)
    means = [read(m.paths(i)["image"], invert_monochrome1=True).array.mean() for i in range(len(m))]
    auc = roc_auc_score(m.table["target"], means)
    assert 0.25 < auc < 0.75, auc


def test_deterministic(tmp_path):
    a = make_phantom("mammo-screening", tmp_path / "a", cases=1, seed=3)
    b = make_phantom("mammo-screening", tmp_path / "b", cases=1, seed=3)
    ta = pd.read_csv(a / "breast-level_annotations.csv")
    assert ta.equals(pd.read_csv(b / "breast-level_annotations.csv"))
    row = ta.iloc[0]
    pa = read(a / "images" / row["study_id"] / f"{row['image_id']}.dicom").array
    pb = read(b / "images" / row["study_id"] / f"{row['image_id']}.dicom").array
    assert np.array_equal(pa, pb)


def test_the_clinical_table_has_one_follow_up_per_exam_driven_by_density(made):
    from medsight.data import build_manifest
    from medsight.data.join import join_table
    from medsight.data.phantoms.mammo_screening import DENSITIES, RISK, _clinical
    from medsight.metrics.survival import harrell_c

    clinical = pd.read_csv(made / "clinical.csv", dtype={"patient_id": str})
    assert list(clinical.columns) == ["patient_id", "age", "family_history", "years", "event"]
    joined = join_table(build_manifest(made), clinical)
    assert joined.matched == 4 * 24 and not joined.unmatched_cases  # each exam's four views
    table = joined.manifest.table
    assert (table.groupby("patient_id")["years"].nunique() == 1).all()
    # the simulated hazard, written out: density (images only), age and family history
    exams = table.drop_duplicates("patient_id")
    hazard = (RISK["density"] * exams["density"].map(DENSITIES.index) + RISK["age"] * (exams["age"] - 55)
              + RISK["family"] * exams["family_history"])  # fmt: skip
    assert harrell_c(exams["years"], exams["event"], hazard) > 0.6
    # drawn from a stream of its own (exam index and seed), so that the images of a seed stay as they were
    first = clinical.iloc[0]
    density = table.loc[table["patient_id"] == first["patient_id"], "density"].iloc[0]
    assert _clinical(first["patient_id"], density, 5, 0) == [
        first["patient_id"],
        first["age"],
        first["family_history"],
        first["years"],
        first["event"],
    ]
