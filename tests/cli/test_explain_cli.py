"""`medsight explain` on a small trained 2D detector: files, a manifest split with boxes, and every
way a user can get it wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from medsight.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    from medsight.engine.fit import fit
    from medsight.engine.recipe import load_recipe
    from tests.tasks.test_conformance import CASES

    root = tmp_path_factory.mktemp("explain")
    (root / "data").mkdir()
    spec, manifest = CASES["detection2d findings"](root / "data")
    (root / "recipe.yaml").write_text(yaml.safe_dump(spec))
    fit(load_recipe(root / "recipe.yaml"), manifest, root / "run")
    return root / "run", manifest


def _run(*args: object) -> object:
    return runner.invoke(app, ["explain", *map(str, args)])


@pytest.mark.slow
def test_a_split_with_boxes_is_explained_and_scored_against_them(trained, tmp_path):
    run, manifest = trained
    result = _run(run, "--data", manifest, "--cases", 5, "-m", "gradcam", "-m", "IG", "--out", tmp_path / "x")
    assert result.exit_code == 0, result.output
    assert "5 image(s) explained" in result.output and "gradcam" in result.output
    written = json.loads((tmp_path / "x" / "explanations.json").read_text())
    boxed = [i for i in written["images"] if i["boxes"]]
    assert boxed and written["images"][: len(boxed)] == boxed  # cases with boxes first
    assert all("energy_in_box" in i["checks"]["ig"] for i in boxed)
    summary = written["methods"]["gradcam"]
    assert summary["boxed_images"] == len(boxed) and 0 <= summary["pointing_game"]["estimate"] <= 1
    assert 0 < summary["box_share"] < 1 and summary["randomisation"]["images"] == 4
    assert len(list((tmp_path / "x").glob("*.png"))) == 10 and (tmp_path / "x" / "maps.npz").is_file()


@pytest.mark.slow
def test_files_are_explained_for_the_target_asked(trained, tmp_path):
    run, manifest = trained
    image = manifest.parent / "img030.png"
    result = _run(run, image, "--target", "Effusion", "-m", "gradcampp", "--no-checks", "--out", tmp_path / "y")
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "y" / "explanations.json").read_text())
    assert written["images"][0]["target"] == "effusion" and written["images"][0]["checks"]["gradcampp"] == {}
    assert (tmp_path / "y" / "img030_gradcampp_effusion.png").is_file()
    deeper = _run(run, image, "--layer", "model.layer3", "-m", "gradcam", "-m", "ig", "--out", tmp_path / "z")
    assert deeper.exit_code == 0, deeper.output
    summary = json.loads((tmp_path / "z" / "explanations.json").read_text())["methods"]
    assert summary["gradcam"]["layer"] == "model.layer3" and "layer" not in summary["ig"]
    wrong = _run(run, image, "--layer", "model.layer9", "--out", tmp_path / "w")
    assert wrong.exit_code == 1 and "no layer 'model.layer9'" in wrong.output


@pytest.mark.slow
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "give image files to explain, or --data"),
        (["--method", "lime", "IMAGE"], "unknown explanation method"),
        (["--target", "fracture", "IMAGE"], "this model explains: mass, effusion"),
        (["IMAGE", "--data", "MANIFEST"], "not both"),
        (["missing.png"], "missing.png does not exist"),
        (["IMAGE", "--out", "FILE"], "is a file"),
        (["--data", "MANIFEST", "--split", "holdout"], "no 'holdout' cases"),
    ],
)
def test_mistakes_get_one_clear_line(trained, tmp_path, extra, message):
    run, manifest = trained
    (tmp_path / "file.txt").write_text("not a folder")
    swap = {"IMAGE": manifest.parent / "img030.png", "MANIFEST": manifest, "FILE": tmp_path / "file.txt",
            "missing.png": tmp_path / "missing.png"}  # fmt: skip
    args = [swap.get(a, a) for a in extra]
    if "--out" not in extra:
        args += ["--out", tmp_path / "out"]
    result = _run(run, *args)
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output


def test_a_missing_run_is_named(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    result = _run(tmp_path / "nope", tmp_path / "a.png", "--out", tmp_path / "o")
    assert result.exit_code == 1 and "nope" in result.output


@pytest.mark.slow
def test_the_report_shows_the_runs_explanations(trained):
    from medsight.validation import evaluate_run, write_report
    from tests.validation.test_report import check_page

    run, manifest = trained
    result = _run(run, "--data", manifest, "--cases", 3, "-m", "gradcam", "-m", "occlusion")  # into RUN/explain
    assert result.exit_code == 0, result.output
    evaluate_run(run, split="test", bootstrap=20)
    page = check_page(write_report(run))
    assert "Explanations" in page.headings
    summary = json.loads((run / "report.json").read_text())
    assert [r["method"] for r in summary["explanations"]["rows"]] == ["gradcam", "occlusion"]
    assert len(summary["explanations"]["overlays"]) == 3
    item = next(c for c in summary["checklist"] if c["item"].startswith("Explainability"))
    assert item["status"] == "reported"
