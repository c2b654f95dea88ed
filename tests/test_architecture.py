"""The layer contract of DESIGN.md holds, and it would catch a violation."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    return subprocess.run([exe, "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def test_layers_are_kept():
    pytest.importorskip("importlinter", reason="import-linter is a dev dependency")
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "KEPT" in result.stdout


def test_a_lower_layer_importing_a_higher_one_is_caught(tmp_path):
    pytest.importorskip("importlinter", reason="import-linter is a dev dependency")
    copy = tmp_path / "proj"
    shutil.copytree(ROOT / "src", copy / "src")
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    bad = copy / "src" / "medsight" / "core" / "bad.py"
    bad.write_text("import medsight.io\n")
    env_path = str(copy / "src")
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    result = subprocess.run(
        [exe, "--no-cache"],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PYTHONPATH": env_path, "PATH": str(Path(sys.executable).parent)},
    )
    assert result.returncode != 0
    assert "BROKEN" in result.stdout
