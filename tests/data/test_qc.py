"""QC finds each planted problem, on the right case, and nothing on clean cases."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medsight.core import LabelClass, LabelSchema
from medsight.data import Manifest, build_manifest
from medsight.data.qc import run_qc
from tests.data.replicas import REPLICAS


def _save(path, array, spacing=(1.0, 1.0, 2.0)):
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), path)


@pytest.fixture
def planted(tmp_path):
    rng = np.random.default_rng(0)
    rows = []

    def case(name, split, patient=None, image=None, label=None, spacing=(1.0, 1.0, 2.0), label_spacing=None):
        img = image if image is not None else rng.normal(100, 20, size=(16, 16, 6)).astype(np.float32)
        lab = label if label is not None else (rng.random((16, 16, 6)) > 0.8).astype(np.uint8)
        _save(tmp_path / f"{name}.nii.gz", img, spacing)
        _save(tmp_path / f"{name}_seg.nii.gz", lab, label_spacing or spacing)
        rows.append(
            {
                "case_id": name,
                "patient_id": patient or name,
                "image": f"{name}.nii.gz",
                "label": f"{name}_seg.nii.gz",
                "split": split,
                "target": int(lab.any()),
                "site": "A" if len(rows) % 2 else "B",
            }
        )
        return img

    for i in range(8):
        case(f"clean{i}", ["train", "val", "test"][i % 3])
    case("corrupt", "train")
    data = (tmp_path / "corrupt.nii.gz").read_bytes()
    (tmp_path / "corrupt.nii.gz").write_bytes(data[: len(data) // 3])
    case("geometry", "train", label_spacing=(1.0, 1.0, 3.0))
    bad = (rng.random((16, 16, 6)) > 0.8).astype(np.uint8) * 7
    case("values", "train", label=bad)
    case("empty", "val", label=np.zeros((16, 16, 6), np.uint8))
    case("outlier", "train", spacing=(1.0, 1.0, 20.0))
    twin = case("dup_a", "train")
    case("dup_b", "test", image=twin)
    near = case("near_a", "train")
    case("near_b", "test", image=near + rng.normal(0, 0.5, size=near.shape).astype(np.float32))
    case("leak_1", "train", patient="P-leak")
    case("leak_2", "test", patient="P-leak")
    schema = LabelSchema(classes=(LabelClass(1, "lesion"),))
    return Manifest(pd.DataFrame(rows), tmp_path, {"label_schema": schema.to_dict(), "notes": ["a planted note"]})


def _by_check(report):
    out = {}
    for f in report.findings:
        out.setdefault(f.check, []).append(f)
    return out


def test_every_planted_problem_is_found(planted, tmp_path):
    report = run_qc(planted)
    found = _by_check(report)
    assert [f.case_id for f in found["unreadable"]] == ["corrupt"]
    assert [f.case_id for f in found["geometry"]] == ["geometry"]
    assert [f.case_id for f in found["label-values"]] == ["values"]
    assert "[7]" in found["label-values"][0].message
    assert [f.case_id for f in found["empty-label"]] == ["empty"]
    assert [f.case_id for f in found["spacing-outlier"]] == ["outlier"]
    assert found["duplicate"][0].severity == "error" and "dup_a" in found["duplicate"][0].message
    near_cases = {f.case_id for f in found["near-duplicate"]}
    assert near_cases == {"near_a"}
    assert "P-leak" in found["patient-leakage"][0].message
    assert found["dataset-note"][0].severity == "info"
    flagged = {f.case_id for f in report.findings if f.case_id}
    assert not any(c.startswith("clean") for c in flagged)
    assert {f.check for f in report.errors} == {
        "unreadable",
        "geometry",
        "label-values",
        "duplicate",
        "patient-leakage",
    }
    path = report.write_json(tmp_path / "qc.json")
    saved = json.loads(path.read_text())
    assert saved["counts"]["geometry"] == {"error": 1}
    assert saved["balance"]["cases_per_split"]["train"] == 10


def test_clean_replica_has_no_errors(tmp_path):
    root, _ = REPLICAS["brats2021"](tmp_path, False)
    report = run_qc(build_manifest(root))
    assert report.errors == []
    assert any(f.check == "not-split" for f in report.findings)


def test_class_balance_per_split_and_subgroup(tmp_path):
    root, _ = REPLICAS["vindr-mammo"](tmp_path, False)
    report = run_qc(build_manifest(root), read_images=False)
    assert report.balance["targets"]["target"] == {"test": {0: 2, 1: 2}, "unsplit": {0: 4, 1: 0}}
    assert "laterality" in report.balance["subgroups"]


def test_medmnist_images_are_read_from_the_npz(tmp_path):
    root, _ = REPLICAS["medmnist"](tmp_path, False)
    report = run_qc(build_manifest(root))
    assert report.errors == [] and report.summary["cases"] == 11
