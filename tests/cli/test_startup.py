"""The CLI starts without torch, MONAI, pandas or the image libraries: `--help` is instant.

Each check runs in a fresh interpreter (this test process has imported everything already).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "monai", "pandas", "scipy", "sklearn", "pydicom", "nibabel", "SimpleITK", "numpy")


def _run_cli(args: list[str]) -> str:
    """Code that runs ``medsight ARGS`` in-process and fails on a non-zero exit."""
    return (
        f"import sys\nsys.argv = ['medsight', *{args!r}]\nfrom medsight.cli.main import main\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code"
    )


def _modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return {name.split(".")[0] for name in json.loads(result.stdout.splitlines()[-1])}


def test_importing_the_cli_pulls_no_heavy_module():
    loaded = _modules_after("import medsight.cli.main")
    assert not loaded & set(HEAVY), f"imported at CLI start: {sorted(loaded & set(HEAVY))}"


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["data", "make-phantom", "--help"]])
def test_help_pulls_no_heavy_module(args):
    loaded = _modules_after(_run_cli(args))
    assert not loaded & set(HEAVY), f"imported by medsight {' '.join(args)}: {sorted(loaded & set(HEAVY))}"


def test_package_imports_are_lazy_but_complete():
    """Every name a package exports still resolves (the lazy map names the right module)."""
    import importlib

    for package in ("core", "io", "data", "metrics", "models", "tasks", "engine", "inference", "validation"):
        module = importlib.import_module(f"medsight.{package}")
        for name in module.__all__:
            assert getattr(module, name) is not None, f"medsight.{package}.{name}"
        with pytest.raises(AttributeError, match="no attribute 'nope'"):
            module.nope  # noqa: B018


def test_png_info_needs_no_dicom_or_torch(tmp_path):
    from PIL import Image

    png = tmp_path / "small.png"
    Image.new("L", (8, 8)).save(png)
    loaded = _modules_after(_run_cli(["info", str(png)]))
    assert not loaded & {"torch", "monai", "pandas", "pydicom", "nibabel", "SimpleITK"}, sorted(loaded)
