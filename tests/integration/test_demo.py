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


def test_phantom_data_is_reused_only_when_it_matches(tmp_path):
    from medsight.validation.demo import phantom_data

    folder = tmp_path / "dr"
    assert phantom_data("dr-grading", folder, cases=3, seed=0)
    assert not phantom_data("dr-grading", folder, cases=3, seed=0)  # same cases and seed: reused
    assert phantom_data("dr-grading", folder, cases=4, seed=0)  # a quick run's data is not a full run's
    assert len(list((folder / "train_images").glob("*.png"))) == 4
    assert phantom_data("dr-grading", folder, cases=4, seed=1)


def test_demo_profiles_are_checked(tmp_path):
    from medsight.core import ConfigError
    from medsight.validation.demo import DEMO, LONG, run_demo

    result = CliRunner().invoke(app, ["demo", "--quick", "--long", "--out", str(tmp_path / "d")])
    assert result.exit_code == 1 and "exclude each other" in result.output
    with pytest.raises(ConfigError, match="quick, standard or long"):
        run_demo(tmp_path / "d", profile="huge")
    standard = {step.recipe: step.cases for step in DEMO}
    assert all(cases > standard[recipe] for recipe, (cases, _) in LONG.items())  # long means more, never less
