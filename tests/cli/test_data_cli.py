"""`medsight data manifest | split | qc | formats` end to end on replicas."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from medsight.cli.main import app
from medsight.data import Manifest
from tests.data.replicas import REPLICAS

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_manifest_split_qc(tmp_path):
    (tmp_path / "eyepacs").mkdir()
    root, _ = REPLICAS["eyepacs2015"](tmp_path / "eyepacs", False)
    out = tmp_path / "m.csv"
    result = invoke("data", "manifest", root, "--out", out)
    assert result.exit_code == 0, result.output
    assert "6 cases, 3 patients (eyepacs2015" in result.output
    result = invoke("data", "split", out, "--by", "patient", "--stratify", "target", "--test", "0.34", "--val", "0")
    assert result.exit_code == 0, result.output
    table = Manifest.load(out).table
    assert (table.groupby("patient_id")["split"].nunique() == 1).all()
    assert set(table["split"]) == {"train", "test"}
    result = invoke("data", "qc", out)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "m.qc.json").read_text())
    assert report["summary"]["cases"] == 6
    assert all("error" not in counts for counts in report["counts"].values())


def test_qc_exit_status_is_one_on_errors(tmp_path):
    root, _ = REPLICAS["aptos2019"](tmp_path, False)
    out = tmp_path / "m.csv"
    invoke("data", "manifest", root, "--out", out)
    victim = next((root / "train_images").iterdir())
    victim.write_bytes(b"not a png")
    result = invoke("data", "qc", out)
    assert result.exit_code == 1
    assert "unreadable" in result.output and "1 error(s)" in result.output


def test_manifest_errors_are_one_line(tmp_path):
    (tmp_path / "x.txt").write_text("?")
    result = invoke("data", "manifest", tmp_path, "--out", tmp_path / "m.csv")
    assert result.exit_code == 1 and result.output.startswith("error:") and "--format" in result.output
    result = invoke("data", "manifest", tmp_path, "--format", "chexprt")
    assert result.exit_code == 1 and "did you mean" in result.output.lower()
    result = invoke("data", "manifest", tmp_path, "--format", "chexpert", "--option", "uncertain")
    assert result.exit_code == 1 and "KEY=VALUE" in result.output


def test_formats_lists_every_adapter():
    result = invoke("data", "formats")
    assert result.exit_code == 0
    for name in ("aptos2019", "brats2021", "luna16", "vindr-mammo", "medmnist"):
        assert name in result.output


def test_make_phantom_then_manifest(tmp_path):
    out = tmp_path / "fundus"
    result = invoke("data", "make-phantom", "dr-grading", "--out", out, "--cases", 3, "--seed", 1)
    assert result.exit_code == 0, result.output
    assert "wrote 3 dr-grading case(s)" in result.output and "aptos2019 layout" in result.output
    result = invoke("data", "manifest", out, "--out", tmp_path / "m.csv")
    assert result.exit_code == 0 and "3 cases" in result.output
    result = invoke("data", "make-phantom", "dr-grading", "--out", out, "--cases", 3)
    assert result.exit_code == 1 and "not empty" in result.output
    result = invoke("data", "make-phantom", "fundus", "--out", tmp_path / "x")
    assert result.exit_code == 1 and "no phantom for recipe 'fundus'" in result.output


def test_join_adds_columns_in_place_or_to_out_and_names_mistakes(tmp_path):
    import pandas as pd

    table = pd.DataFrame({"case_id": ["a", "b", "c"], "patient_id": ["P1", "P2", "P3"],
                          "image": ["a.png", "b.png", "c.png"]})  # fmt: skip
    table.to_csv(tmp_path / "m.csv", index=False)
    pd.DataFrame({"patient_id": ["P1", "P2", "P9"], "age": [61, 72, 50], "event": [1, 0, 1]}).to_csv(
        tmp_path / "clinical.csv", index=False
    )
    result = invoke("data", "join", tmp_path / "m.csv", tmp_path / "clinical.csv", "--out", tmp_path / "j.csv")
    assert result.exit_code == 0, result.output
    assert "joined 2 column(s) on patient_id (age, event): 2 of 3 case(s) matched" in result.output
    assert (
        "1 case(s) found no row (e.g. c)" in result.output and "1 row(s) of the table matched no case" in result.output
    )
    joined = Manifest.load(tmp_path / "j.csv").table
    assert joined["age"].tolist()[:2] == [61, 72] and "age" not in Manifest.load(tmp_path / "m.csv").table
    again = invoke("data", "join", tmp_path / "j.csv", tmp_path / "clinical.csv", "--columns", "age")
    assert again.exit_code == 1 and "already has column(s) ['age']: give --replace" in again.output
    for args, message in (
        (["--on", "site"], "--on takes auto, case_id or patient_id"),
        (["--columns", "agee"], "the table has no column(s) ['agee']"),
    ):
        result = invoke("data", "join", tmp_path / "m.csv", tmp_path / "clinical.csv", *args)
        assert result.exit_code == 1 and message in result.output, result.output
    result = invoke("data", "join", tmp_path / "m.csv", tmp_path / "missing.csv")
    assert result.exit_code == 1 and "no such file" in result.output
