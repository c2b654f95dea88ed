"""`medsight predict --ray`: the inputs spread over the workers of a local Ray give the same rows,
in the same order, as one process; label maps land where they would; an unreadable input is
named as without Ray; Ray options without --ray are refused."""

from __future__ import annotations

import gzip
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

pytest.importorskip("ray", reason="Ray is not installed (pip install 'medsight[dist]')")

from medsight.cli.main import app
from medsight.core.errors import InputError
from medsight.data.manifest import Manifest
from medsight.inference import Predictor
from medsight.inference.distributed import predict_on_ray
from medsight.io import read
from tests.export.runs import trained

runner = CliRunner()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, Path, Path]]:
    """A one-epoch segmentation run and a binary classifier run, with their data and manifests."""
    return {case: trained(tmp_path_factory.mktemp(case), case) for case in ("segmentation", "binary")}


def test_a_volume_batch_on_ray_equals_one_process(runs, tmp_path):
    run, data, _ = runs["segmentation"]
    predictor = Predictor.from_run(run)
    inputs = [data]  # a folder: its images (label maps too, as a user pointing at a folder gets)
    alone = predictor.predict_files(inputs, masks=tmp_path / "alone").table()
    seen = []
    spread = predict_on_ray(predictor, inputs=inputs, workers=2, masks=tmp_path / "ray",
                            progress=lambda stage, done, total: seen.append((done, total))).table()  # fmt: skip
    assert list(spread["input"]) == list(alone["input"]) and len(spread) == 20
    scores = [c for c in alone.columns if c not in ("input", "output")]
    pd.testing.assert_frame_equal(spread[scores], alone[scores], rtol=1e-4, atol=1e-5)
    for mine, theirs in zip(spread["output"], alone["output"], strict=True):
        assert Path(mine).parent == (tmp_path / "ray").resolve() and Path(mine).name == Path(theirs).name
        a, b = read(mine).array, read(theirs).array
        assert (a == b).mean() > 0.999  # one thread or two: a voxel at a tie may differ
    assert seen[-1] == (20, 20) and len(seen) > 1  # in shares, counted as they come back


def test_predict_ray_on_the_cli_equals_predict_for_files_and_a_manifest(runs, tmp_path):
    run, data, manifest = runs["binary"]
    for source, extra in (("files", [data]), ("manifest", ["--data", manifest, "--split", "test"])):
        plain, spread = tmp_path / f"{source}.csv", tmp_path / f"{source}_ray.csv"
        args = ["predict", str(run), *map(str, extra)]
        result = runner.invoke(app, [*args, "--out", str(plain)])
        assert result.exit_code == 0, result.output
        result = runner.invoke(app, [*args, "--out", str(spread), "--ray", "--workers", "2"])
        assert result.exit_code == 0, result.output
        a, b = pd.read_csv(plain), pd.read_csv(spread)
        assert list(a.columns) == list(b.columns) and len(a) == (36 if source == "files" else 8)
        pd.testing.assert_frame_equal(a, b, rtol=1e-4, atol=1e-5)


def test_an_unreadable_input_is_named_as_without_ray(runs, tmp_path):
    run, data, _ = runs["segmentation"]
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        shutil.copy(data / f"case{i}.nii.gz", folder / f"case{i}.nii.gz")
    whole = gzip.decompress((data / "case3.nii.gz").read_bytes())
    (folder / "broken.nii.gz").write_bytes(gzip.compress(whole[: len(whole) // 3]))  # cut short
    with pytest.raises(InputError, match=r"broken\.nii\.gz"):
        predict_on_ray(Predictor.from_run(run), inputs=[folder], workers=2)
    with pytest.raises(InputError, match="no 'nonsense' cases"):
        predict_on_ray(Predictor.from_run(run), manifest=Manifest.load(runs["segmentation"][2]), split="nonsense")


def test_ray_options_need_ray_and_ray_needs_the_dist_extra(runs, tmp_path, monkeypatch):
    run, data, _ = runs["binary"]
    result = runner.invoke(app, ["predict", str(run), str(data), "--out", str(tmp_path / "p.csv"), "--workers", "2"])
    assert result.exit_code != 0 and "give --ray too" in result.output
    assert not np.any([p.suffix == ".csv" for p in tmp_path.iterdir()])
    monkeypatch.setitem(sys.modules, "ray", None)  # as where it is not installed
    result = runner.invoke(app, ["predict", str(run), str(data), "--out", str(tmp_path / "p.csv"), "--ray"])
    assert result.exit_code != 0 and "pip install 'medsight[dist]'" in result.output


def test_workers_are_kept_between_calls_in_a_ray_that_outlives_them(runs, tmp_path):
    import ray

    from medsight.inference import distributed

    run, data, _ = runs["binary"]
    predictor = Predictor.from_run(run)
    inputs = sorted(data.glob("img00*.png"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        first = predict_on_ray(predictor, inputs=inputs, workers=2).table()
        kept = {key: list(handles) for key, handles in distributed._KEPT.items()}
        second = predict_on_ray(predictor, inputs=inputs, workers=2).table()
        assert list(kept) == list(distributed._KEPT) and len(kept) == 1  # the same two workers, not new ones
        assert all(a is b for a, b in zip(next(iter(kept.values())), next(iter(distributed._KEPT.values())),
                                          strict=True))  # fmt: skip
        pd.testing.assert_frame_equal(first, second)
    finally:
        ray.shutdown()
        distributed._KEPT.clear()
