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


def _grades(tmp_path, targets, images=None):
    from PIL import Image

    rows = []
    for i, target in enumerate(targets):
        name = f"c{i}.png"
        Image.new("L", (8, 8), color=i * 10).save(tmp_path / name)
        image = name if images is None else images[i]
        rows.append({"case_id": f"c{i}", "patient_id": f"p{i}", "image": image, "split": "", "target": target})
    return Manifest(pd.DataFrame(rows), tmp_path, {"label_names": ["0", "1", "2", "3", "4"]})


def test_targets_outside_the_schema_are_errors_naming_the_case(tmp_path):
    """7 when grades are 0..4, -1, 'abc', 2.5 and an empty cell all passed QC, then broke training."""
    manifest = _grades(tmp_path, [0, 7, -1, "abc", 2.5, None, 4])
    report = run_qc(manifest, read_images=False)
    messages = {f.message.split(" for ")[0]: f.case_id for f in report.errors if f.check == "target-values"}
    assert messages == {
        "target is not a number": "c3",
        "target is empty (every case needs a class)": "c5",
        "target is not a whole number": "c4",
        "target is negative": "c2",
        "target is above 4 (classes 0..4: 0, 1, 2, 3, 4)": "c1",
    }
    assert "c1: '7'" in next(f.message for f in report.errors if f.case_id == "c1")


def test_recipe_classes_and_findings(tmp_path):
    manifest = _grades(tmp_path, [0, 1, 2])
    report = run_qc(manifest, read_images=False, classes=["benign", "malignant"])
    assert [f.case_id for f in report.errors] == ["c2"]
    table = manifest.table.drop(columns="target").assign(target_effusion=[0, 1, None], target_nodule=[1, 2, 0])
    findings = Manifest(table, tmp_path, {})
    report = run_qc(findings, read_images=False, classes=["effusion", "nodule", "mass"], multilabel=True)
    errors = [f.message for f in report.errors]
    assert len(errors) == 2 and "target_nodule is not 0 or 1" in errors[0] and "['target_mass']" in errors[1]


def test_empty_image_cell_is_an_error_and_training_names_the_case(tmp_path):
    manifest = _grades(tmp_path, [0, 1], images=["c0.png", ""])
    report = run_qc(manifest)
    assert [(f.check, f.case_id) for f in report.errors] == [("empty-image", "c1")]
    from medsight.core import InputError
    from medsight.data.reading import read_case_image

    with pytest.raises(InputError, match="case c1: its image cell is empty"):
        read_case_image(manifest, manifest.table.iloc[1], "image")


def test_training_names_the_cases_with_bad_targets(tmp_path):
    from medsight.core import InputError
    from medsight.engine.recipe import load_recipe
    from medsight.tasks import task_for

    manifest = _grades(tmp_path, [0, "abc", 7, 2])
    with pytest.raises(InputError, match=r"2 case\(s\) are not \(e.g. c1: 'abc', c2: 7\)"):
        task_for(load_recipe("dr-grading").task).targets(manifest)
