"""Every registered adapter reads its miniature replica, round-trips through CSV, is detected
automatically (unless generic), and rejects a malformed variant with a clear error."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medsight.core import ConfigError, InputError
from medsight.data import Manifest, build_manifest, detect_adapters, registered_adapters
from tests.data.replicas import REPLICAS

GENERIC = {"csv", "folder"}
ALL = sorted(registered_adapters())


def test_every_adapter_has_a_replica():
    assert set(ALL) == set(REPLICAS), "add a replica builder in tests/data/replicas.py for each adapter"


@pytest.mark.parametrize("name", ALL)
def test_adapter_reads_its_replica(name, tmp_path):
    root, facts = REPLICAS[name](tmp_path, False)
    manifest = build_manifest(root, format=name)
    table = manifest.table
    assert len(manifest) == facts["cases"]
    assert table["patient_id"].nunique() == facts["patients"]
    assert manifest.info["dataset"] == name
    for paths in (manifest.paths(i) for i in range(len(manifest))):
        assert paths and all(p.exists() for p in paths.values())  # files, or a DICOM series folder
    if "test" in facts:
        assert int((table["split"] == "test").sum()) == facts["test"]
    if "targets" in facts:
        assert table["target"].tolist() == facts["targets"]
    if "folds" in facts:
        assert table["fold"].tolist() == facts["folds"]
    # CSV round trip keeps everything, with paths relative to the manifest file
    out = tmp_path / "out" / "manifest.csv"
    out.parent.mkdir()
    manifest.save(out)
    again = Manifest.load(out)
    assert list(again.table["case_id"]) == list(table["case_id"])
    assert again.info["dataset"] == name
    for i in range(len(again)):
        assert {k: v.resolve() for k, v in again.paths(i).items()} == {
            k: v.resolve() for k, v in manifest.paths(i).items()
        }


@pytest.mark.parametrize("name", [n for n in ALL if n not in GENERIC])
def test_layout_is_detected(name, tmp_path):
    root, _ = REPLICAS[name](tmp_path, False)
    assert detect_adapters(root) == [name]
    assert build_manifest(root).info["dataset"] == name


@pytest.mark.parametrize("name", ALL)
def test_malformed_replica_fails_clearly(name, tmp_path):
    root, facts = REPLICAS[name](tmp_path, True)
    with pytest.raises(InputError, match=_escape(facts["error"])):
        build_manifest(root, format=name)


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_eyepacs_eyes_share_a_patient(tmp_path):
    root, _ = REPLICAS["eyepacs2015"](tmp_path, False)
    table = build_manifest(root).table
    assert table.groupby("patient_id")["laterality"].apply(sorted).tolist() == [["L", "R"]] * 3


def test_nih_findings_boxes_and_official_split(tmp_path):
    root, _ = REPLICAS["nih-cxr14"](tmp_path, False)
    m = build_manifest(root)
    row = m.table.set_index("case_id").loc["00000003_001.png"]
    assert row["target_nodule"] == 1 and row["target_effusion"] == 1 and row["target_hernia"] == 0
    assert json.loads(row["boxes"]) == [{"label": "Nodule", "x": 225.08, "y": 547.01, "w": 86.78, "h": 79.18}]
    assert len(m.target_columns) == 14
    assert m.table.loc[m.table.case_id == "00000002_000.png", [c for c in m.target_columns]].sum(axis=1).item() == 0


@pytest.mark.parametrize(("policy", "expected"), [("ignore", np.nan), ("ones", 1.0), ("zeros", 0.0)])
def test_chexpert_uncertain_policy(tmp_path, policy, expected):
    root, _ = REPLICAS["chexpert"](tmp_path, False)
    m = build_manifest(root, options={"uncertain": policy})
    lung_opacity = m.table["target_lung_opacity"].iloc[0]  # -1.0 in the CSV
    assert (np.isnan(lung_opacity) and np.isnan(expected)) or lung_opacity == expected
    assert m.table["target_cardiomegaly"].iloc[0] == 1.0
    assert m.table["target_no_finding"].iloc[0] == 0.0  # blank = not mentioned


def test_unknown_option_gets_a_suggestion(tmp_path):
    root, _ = REPLICAS["chexpert"](tmp_path, False)
    with pytest.raises(ConfigError, match="did you mean 'uncertain'"):
        build_manifest(root, options={"uncertian": "ones"})
    with pytest.raises(ConfigError, match=r"unknown data set format 'chexprt'.*'chexpert'"):
        build_manifest(root, format="chexprt")


def test_brats2023_patient_and_label_convention(tmp_path):
    root, _ = REPLICAS["brats2023"](tmp_path, False)
    m = build_manifest(root)
    assert sorted(m.table["patient_id"].unique()) == ["BraTS-GLI-00000", "BraTS-GLI-00002"]
    assert m.info["label_schema"]["regions"]["ET"] == [3]
    assert m.image_columns == ["image_t1", "image_t1ce", "image_t2", "image_flair"]


def test_luna16_nodules_in_world_mm(tmp_path):
    root, _ = REPLICAS["luna16"](tmp_path, False)
    m = build_manifest(root)
    boxes = [json.loads(b) for b in m.table["boxes"]]
    assert len(boxes[0]) == 2 and boxes[0][0]["center"] == [-128.6994211, -175.3192718, -298.3875064]
    assert any(b.get("excluded") for b in boxes[2])
    assert m.table["target"].tolist() == [1, 0, 1]


def test_mnms_labels_are_remapped_to_the_cardiac_schema(tmp_path):
    root, _ = REPLICAS["mnms"](tmp_path, False)
    m = build_manifest(root)
    assert m.info["label_remap"] == {"1": 3, "2": 2, "3": 1}
    assert set(m.table["vendor"]) == {"A", "B"}


def test_csv_file_and_npz_file_can_be_given_directly(tmp_path):
    root, _ = REPLICAS["csv"](tmp_path / "a" if (tmp_path / "a").mkdir() is None else tmp_path, False)
    m = build_manifest(root / "labels.csv")
    assert m.info["label_names"] == ["benign", "malignant"] and m.table["target"].tolist() == [0, 1, 0]
    assert m.attribute_columns == ["site"]
    (tmp_path / "b").mkdir()
    npz_root, _ = REPLICAS["medmnist"](tmp_path / "b", False)
    assert len(build_manifest(npz_root / "pneumoniamnist.npz")) == 11


def test_unrecognised_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match=r"could not recognise the layout.*--format"):
        build_manifest(tmp_path)


def test_parquet_round_trip(tmp_path):
    pytest.importorskip("pyarrow")
    root, _ = REPLICAS["aptos2019"](tmp_path, False)
    m = build_manifest(root)
    m.save(tmp_path / "m.parquet")
    again = Manifest.load(tmp_path / "m.parquet")
    assert again.table["target"].tolist() == m.table["target"].tolist()


def test_lidc_nodules_are_clustered_across_readers(tmp_path):
    root, _ = REPLICAS["lidc-idri"](tmp_path, False)
    m = build_manifest(root)
    boxes = m.boxes(0)
    found = [b for b in boxes if not b.get("excluded")]
    assert len(found) == 1
    (nodule,) = found
    assert nodule["readers"] == 3 and nodule["malignancy"] == 3.0
    # pixel (30, 20) on the slice at z = -87.5 of a grid starting at (-22.4, -22.4) with 0.7 mm pixels
    np.testing.assert_allclose(nodule["center"], [-22.4 + 30.33 * 0.7, -22.4 + 19.67 * 0.7, -87.5], atol=0.5)
    assert 6.0 < nodule["diameter_mm"] < 10.0
    labels = sorted(b["label"] for b in boxes if b.get("excluded"))
    assert labels == ["nodule", "non-nodule", "small-nodule"]  # the one-reader nodule is excluded
    relaxed = build_manifest(root, options={"min_readers": 1})
    assert len([b for b in relaxed.boxes(0) if not b.get("excluded")]) == 2


def test_cbis_ddsm_combines_abnormalities_and_finds_renamed_files(tmp_path):
    root, _ = REPLICAS["cbis-ddsm"](tmp_path, False)
    t = build_manifest(root).table.set_index("case_id")
    row = t.loc["MASS-TRAINING_P_00001_LEFT_CC"]
    assert row["abnormalities"] == 2 and row["target"] == 1 and row["assessment"] == 4
    assert row["image"].endswith("1-1.dcm")  # the CSV said 000000.dcm under other UID folders
    assert "ROI mask" not in " ".join(t["image"])
    boxes = json.loads(row["boxes"])  # abnormality 2 has no mask folder: no box
    assert boxes == [{"label": "mass malignant", "birads": 4, "x": 3.0, "y": 5.0, "w": 6.0, "h": 7.0}]
    assert json.loads(t.loc["MASS-TRAINING_P_00001_LEFT_MLO", "boxes"]) == []  # its mask is empty
    assert "boxes" not in build_manifest(root, options={"boxes": False}).table.columns
