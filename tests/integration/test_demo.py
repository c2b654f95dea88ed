"""The demo's whole chain (phantoms -> manifest -> split -> train -> evaluate -> summary) in quick mode."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from medsight.cli.main import app


@pytest.mark.slow
def test_quick_demo_runs_every_recipe(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert [r["recipe"] for r in summary] == ["dr-grading", "dr-grading", "cxr-findings", "mammo-screening"]
    for recipe in ("dr-grading", "cxr-findings", "mammo-screening"):
        assert (tmp_path / "demo" / "runs" / recipe / "metrics_test.json").is_file()
    assert "medsight demo" in result.output and "done in" in result.output
