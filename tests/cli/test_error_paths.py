"""Every error path a user can reach from the CLI ends in one ``error: Type: message`` line that
names the path or value at fault (and, through ``main``, usage errors too): no traceback, no
boxed panel, no hidden temporary path, no ``np.float64(...)``."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from medsight.cli.main import app
from medsight.core import Geometry, Volume
from medsight.io import write

runner = CliRunner()


@pytest.fixture
def files(tmp_path):
    write(Volume(np.zeros((1, 2, 8, 8), np.int16), Geometry()), tmp_path / "ct.nii.gz")
    (tmp_path / "plain.txt").write_text("hello")
    (tmp_path / "one.csv").write_text("image\na.png\n")
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked").chmod(0o500)
    yield tmp_path
    (tmp_path / "locked").chmod(0o700)


# (arguments, text the one-line error must contain); {t} is the test's folder
CASES = [
    (["info", "{t}/missing.nii.gz"], "{t}/missing.nii.gz: no such file or folder"),
    (["info", "{t}/plain.txt"], "{t}/plain.txt"),
    (["convert", "{t}/ct.nii.gz", "{t}/nowhere/out.nii.gz"], "folder {t}/nowhere does not exist"),
    (["convert", "{t}/ct.nii.gz", "/proc/medsight-out.nii.gz"], "cannot write /proc/medsight-out.nii.gz"),
    (["convert", "{t}/ct.nii.gz", "{t}/out.png", "--slice", "0", "--window", "nan,nan"], "'nan,nan'"),
    (["convert", "{t}/ct.nii.gz", "{t}/ct.nii.gz", "--overwrite"], "would destroy the source"),
    (["train", "-r", "dr-grading", "--data", "{t}/nope.csv", "--out", "{t}/run"], "{t}/nope.csv does not exist"),
    (["train", "-r", "dr-grading", "--data", "{t}/one.csv", "--out", "{t}/plain.txt"], "--out {t}/plain.txt is a file"),
    (["train", "-r", "dr-gradin", "--data", "{t}/one.csv", "--out", "{t}/run"], "unknown recipe 'dr-gradin'"),
    (["train", "-r", "dr-grading", "--data", "{t}/one.csv", "--out", "{t}/run", "--set", "train.lr=fast"], "train.lr"),
    (["predict", "{t}/run", "{t}/ct.nii.gz", "--out", "{t}/locked"], "--out {t}/locked is a folder"),
    (["predict", "{t}/run", "{t}/ct.nii.gz", "--out", "{t}/no/p.csv"], "folder {t}/no does not exist"),
    (["predict", "{t}", "{t}/ct.nii.gz", "--out", "{t}/p.csv"], "{t} is not a medsight run folder"),
    (["evaluate", "{t}/ct.nii.gz"], "{t}/ct.nii.gz is not a medsight run folder"),
    (["data", "manifest", "{t}/one.csv", "--out", "{t}/m.csv"], "one.csv lacks required column(s) 'label'"),
    (["data", "split", "{t}/missing.csv"], "{t}/missing.csv"),
    (["data", "qc", "{t}/plain.txt"], "{t}/plain.txt"),
    (["data", "make-phantom", "dr-gradin", "--out", "{t}/ph"], "no phantom for recipe 'dr-gradin'"),
    (["clean", "{t}/plain.txt"], "{t}/plain.txt is not a folder"),
]


@pytest.mark.parametrize(("args", "expected"), CASES, ids=[" ".join(a[:2]) + f"-{i}" for i, (a, _) in enumerate(CASES)])
def test_error_is_one_line_naming_what_is_at_fault(files, args, expected):
    result = runner.invoke(app, [a.format(t=files) for a in args])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert expected.format(t=files) in lines[0], lines[0]
    assert "unexpected" not in lines[0] and "np.float64" not in lines[0] and ".tmp" not in lines[0]


def test_unwritable_folder_names_the_users_path(files):
    if os.geteuid() == 0:
        pytest.skip("root may write anywhere; the permission check cannot be exercised")
    result = runner.invoke(app, ["convert", str(files / "ct.nii.gz"), str(files / "locked" / "out.nii.gz")])
    assert result.exit_code == 1 and f"{files / 'locked'} is not writable" in result.output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train", "--epochs", "ten"], "error: UsageError: Invalid value for '--epochs'"),
        (["nope"], "error: UsageError: No such command 'nope'"),
        (["info"], "error: UsageError: Missing argument"),
    ],
)
def test_usage_errors_are_one_line_with_status_2(args, expected):
    result = subprocess.run([sys.executable, "-m", "medsight", *args], capture_output=True, text=True)
    assert result.returncode == 2
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(expected), lines


def test_predict_takes_files_or_a_manifest_not_both_nor_neither(tmp_path):
    runner = CliRunner()
    for args in ([], ["x.png", "--data", "m.csv"]):
        result = runner.invoke(app, ["predict", str(tmp_path), *args])
        assert result.exit_code != 0 and "give input files or --data MANIFEST" in result.output, result.output
    result = runner.invoke(app, ["predict", str(tmp_path), "--data", "m.csv", "--split", "tset"])
    assert result.exit_code != 0 and "--split must be all, train, val or test" in result.output
