"""A failed write leaves nothing behind and never damages what was there."""

from __future__ import annotations

import numpy as np
import pytest

from medsight.core import Geometry, InputError, Volume
from medsight.io import write, write_dicom_series


@pytest.fixture
def volume():
    return Volume(np.arange(60, dtype=np.int16).reshape(1, 3, 4, 5), Geometry())


class WriteFailedError(Exception):
    pass


def test_failed_nifti_write_leaves_no_file(tmp_path, volume, monkeypatch):
    import nibabel as nib

    def explode(img, path):
        with open(path, "wb") as fh:
            fh.write(b"partial")
        raise WriteFailedError("disk full")

    monkeypatch.setattr(nib, "save", explode)
    with pytest.raises(WriteFailedError):
        write(volume, tmp_path / "out.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_file(tmp_path, volume, monkeypatch):
    target = tmp_path / "out.nrrd"
    write(volume, target)
    before = target.read_bytes()
    import SimpleITK as sitk

    monkeypatch.setattr(sitk, "WriteImage", lambda *a, **k: (_ for _ in ()).throw(WriteFailedError("killed")))
    with pytest.raises(WriteFailedError):
        write(volume, target, overwrite=True)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.nrrd"]


def test_failed_dicom_series_leaves_no_folder(tmp_path, volume, monkeypatch):
    import pydicom

    calls = {"n": 0}
    real = pydicom.dcmwrite

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise WriteFailedError("network drive vanished")
        return real(*args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmwrite", flaky)
    with pytest.raises(WriteFailedError):
        write_dicom_series(volume, tmp_path / "series")
    assert list(tmp_path.iterdir()) == []


def test_existing_outputs_are_not_overwritten_by_default(tmp_path, volume):
    write(volume, tmp_path / "a.mha")
    with pytest.raises(InputError, match=r"already exists.*--overwrite"):
        write(volume, tmp_path / "a.mha")
    write(volume, tmp_path / "series")
    with pytest.raises(InputError, match=r"not empty.*--overwrite"):
        write(volume, tmp_path / "series")
    write(volume, tmp_path / "series", overwrite=True)
    assert len(list((tmp_path / "series").iterdir())) == 3


def test_missing_parent_folder(tmp_path, volume):
    with pytest.raises(InputError, match="does not exist"):
        write(volume, tmp_path / "no" / "such" / "a.nii.gz")


def test_one_check_names_the_option_and_the_fix(tmp_path):
    from medsight.io.atomic import check_writable

    (tmp_path / "plain.txt").write_text("x")
    cases = [
        (tmp_path, f"--out {tmp_path} is a folder; give a file name inside it"),
        (tmp_path / "no" / "p.csv", f"folder {tmp_path / 'no'} does not exist; create it first (mkdir -p"),
        (tmp_path / "plain.txt" / "p.csv", f"{tmp_path / 'plain.txt'} is not a folder"),
    ]
    for target, message in cases:
        with pytest.raises(InputError) as caught:
            check_writable(target, option="--out")
        assert message in str(caught.value) and f"--out {target}" in str(caught.value)
    assert check_writable(tmp_path / "p.csv", option="--out") == tmp_path / "p.csv"
    assert check_writable(tmp_path, file=False) == tmp_path  # a folder may be the target of a folder write


def _killed_mid_write(tmp_path, target):
    """A child process starts an atomic write of ``target`` and is killed (SIGKILL) inside it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    code = (
        "import sys, time\n"
        "from medsight.io.atomic import atomic_dir, atomic_file\n"
        f"target = {str(target)!r}\n"
        "writer = atomic_dir if target.endswith('_dir') else atomic_file\n"
        "with writer(target) as tmp:\n"
        "    (tmp / 'half.dcm').write_bytes(b'x' * 100) if target.endswith('_dir') else tmp.write_bytes(b'half')\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    time.sleep(0.05)
    return child.pid


def test_temporaries_of_a_killed_writer_are_removed_by_the_next_write(tmp_path, volume):
    pid = _killed_mid_write(tmp_path, tmp_path / "a.nii.gz")
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(f".a.nii.gz.{pid}-") and left.name.endswith(".tmp.nii.gz")
    pid = _killed_mid_write(tmp_path, tmp_path / "series_dir")  # its own write swept the first away
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(f".series_dir.{pid}-") and (left / "half.dcm").is_file()
    write(volume, tmp_path / "b.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.nii.gz"]


def test_a_live_writers_temporary_and_other_hidden_files_are_kept(tmp_path, volume):
    import os

    from medsight.io.atomic import remove_stale_temporaries

    live = tmp_path / f".c.nii.gz.{os.getppid()}-0123abcd.tmp.nii.gz"  # our parent is alive
    mine = tmp_path / ".notes.tmp"
    for path in (live, mine):
        path.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == []
    assert live.exists() and mine.exists()


def test_stale_temporaries_from_earlier_versions_go_after_an_hour(tmp_path):
    import os
    import time

    from medsight.io.atomic import remove_stale_temporaries

    old = tmp_path / ".scan.nii.gz.1a2b3c4d.tmp.nii.gz"  # the name before process ids were recorded
    fresh = tmp_path / ".scan2.nii.gz.5e6f7a8b.tmp.nii.gz"
    for path in (old, fresh):
        path.write_bytes(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert remove_stale_temporaries(tmp_path) == [old]
    assert fresh.exists()


def test_output_folders_follow_the_umask(tmp_path, volume):
    import os
    import stat

    previous = os.umask(0o022)
    try:
        write_dicom_series(volume, tmp_path / "series")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "series").stat().st_mode) == 0o755


def test_medsight_clean_removes_stale_temporaries(tmp_path):
    from typer.testing import CliRunner

    from medsight.cli.main import app

    nested = tmp_path / "runs" / "a"
    nested.mkdir(parents=True)
    _killed_mid_write(tmp_path, nested / "out.png")
    result = CliRunner().invoke(app, ["clean", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "removed 1 stale temporary" in result.output and list(nested.iterdir()) == []
