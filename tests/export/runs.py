"""One-epoch runs of the conformance cases, for the export tests."""

from __future__ import annotations

from pathlib import Path

import yaml

from medsight.engine.fit import fit
from medsight.engine.recipe import load_recipe
from tests.tasks.test_conformance import CASES


def trained(root: Path, case: str) -> tuple[Path, Path, Path]:
    """A one-epoch run of conformance case ``case`` under ``root``; returns (run, data folder, manifest)."""
    data = root / "data"
    data.mkdir()
    spec, manifest = CASES[case](data)
    (root / "recipe.yaml").write_text(yaml.safe_dump(spec))
    run = root / "run"
    fit(load_recipe(root / "recipe.yaml"), manifest, run)
    return run, data, manifest
