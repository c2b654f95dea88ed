"""The validation report: a self-contained page from what `medsight evaluate` wrote, for any task.
Every task's page is also built in the conformance test (tests/tasks/test_conformance.py)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medsight.core.errors import InputError
from medsight.core.volume import Volume
from medsight.models.registry import ModelChoice
from medsight.tasks import ModelPackage, task_for
from medsight.tasks import classification_report as report
from medsight.tasks.results import json_ready
from medsight.validation import build_report, write_report

HEADINGS = ("Headline figures", "Data evaluated", "Warnings", "Model card", "Provenance")


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self._in_heading = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self._in_heading = tag in ("h1", "h2")
        if tag == "img":
            self.images.append(values.get("src") or "")
        for name in ("href", "src"):
            if values.get(name) and not str(values[name]).startswith("data:"):
                self.links.append(str(values[name]))

    def handle_data(self, data: str) -> None:
        if self._in_heading and data.strip():
            self.headings.append(data.strip())
            self._in_heading = False


def check_page(page: Path, *, plots: int | None = None) -> _Page:
    """The page holds the expected headings, only embedded PNGs that decode, nothing it must fetch;
    report.json beside it; and, where Chromium is installed, it renders (a non-blank screenshot,
    the headings in the rendered DOM)."""
    parsed = _Page()
    parsed.feed(page.read_text(encoding="utf-8"))
    assert set(HEADINGS) <= set(parsed.headings), parsed.headings
    assert not parsed.links, f"the page must need no other file or network: {parsed.links}"
    for src in parsed.images:
        assert src.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert image.format == "PNG" and min(image.size) > 100
    if plots is not None:
        assert len(parsed.images) == plots
    summary = json.loads(page.with_suffix(".json").read_text())
    shown = len((summary.get("explanations") or {}).get("overlays", []))
    assert len(summary["plots"]) + len(summary["gallery"]) + shown == len(parsed.images) and summary["figures"]
    _render(page)
    return parsed


def _render(page: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        return  # .ci/run installs Debian's chromium; a user's machine may lack it
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1100,1800"]
    shot = page.with_name("screenshot.png")
    subprocess.run([browser, *flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120,
                   check=True)  # fmt: skip
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (1800, 1100) and pixels.std() > 10  # drawn, not blank
    dom = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout  # fmt: skip
    assert all(re.search(f"<h2>{heading}</h2>", dom) for heading in HEADINGS)


def _run(folder: Path, rng: np.random.Generator) -> Path:
    """A binary run's package, evaluation and predictions (women with four views, one without a site)."""
    folder.mkdir()
    task = task_for({"kind": "binary", "classes": ["negative", "positive"]})
    ModelPackage(recipe="toy", task=task.spec, model=ModelChoice(name="resnet10"), in_channels=1,
                 preprocess={"size": 32, "channels": 1}).save(folder)  # fmt: skip
    n = 80
    table = pd.DataFrame({"case_id": [f"c{i}" for i in range(n)], "patient_id": [f"p{i // 4}" for i in range(n)],
                          "target": rng.integers(0, 2, n), "site": ["A", "B", None, "A"] * (n // 4),
                          "sex": ["F"] * n})  # fmt: skip
    table["prob"] = (0.4 * table["target"] + 0.6 * rng.random(n)).clip(0, 1)
    table["image"] = ""
    worst = (int(table["prob"].where(table["target"] == 0).idxmax()),
             int(table["prob"].where(table["target"] == 1).idxmin()))  # fmt: skip
    for i in worst:  # images of the worst negative and the worst positive only
        Image.fromarray(rng.integers(0, 255, (40, 48), dtype=np.uint8)).save(folder / f"c{i}.png")
        table.loc[i, "image"] = str(folder / f"c{i}.png")
    figures, details, _ = report.evaluate(task, table, table, split="test", points=["youden"], n=50)
    shown = {k: {"estimate": v.estimate, "low": v.low, "high": v.high, "undefined": v.undefined}
             for k, v in figures.items()}  # fmt: skip
    metrics = {"cases": n, "patients": n // 4, "bootstrap_resamples": 50, "precision": "fp32", "figures": shown,
               **details, "warnings": ["<script>alert(1)</script>"]}  # fmt: skip
    (folder / "metrics_test.json").write_text(json.dumps(json_ready(metrics), allow_nan=False))
    table.to_csv(folder / "predictions_test.csv", index=False)
    return folder


def test_a_binary_runs_report_shows_its_figures_plots_and_subgroups(tmp_path):
    run = _run(tmp_path / "run", np.random.default_rng(0))
    page = write_report(run)
    assert page == run / "report.html"
    parsed = check_page(page, plots=5)  # ROC, precision-recall, reliability, decision curves; the gallery
    assert json.loads(page.with_suffix(".json").read_text())["plots"][:2] == ["ROC curves", "Precision-recall curves"]
    assert {"Calibration", "Plots", "Subgroups", "Failure gallery"} <= set(parsed.headings)
    assert build_report(run)["gallery"][0]["title"] == "Worst errors: score"
    html = page.read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html  # text is escaped
    content = build_report(run)
    names = [row["name"] for row in content["figures"]]
    assert names[:2] == ["auc", "average precision"]
    assert content["data"]["subgroups"]["site"] == "A: 40, B: 20, unknown: 20"
    assert content["data"]["labels"]["target"].count(":") == 2 and content["calibration"][0]["name"] == "score"
    with pytest.raises(InputError, match="does not exist; create it first"):
        write_report(run, out=tmp_path / "elsewhere" / "r.html")
    (tmp_path / "elsewhere").mkdir()
    other = write_report(run, out=tmp_path / "elsewhere" / "r.html")
    assert other.is_file() and other.with_suffix(".json").is_file()


def test_a_run_not_evaluated_is_refused_with_the_way_out(tmp_path):
    run = _run(tmp_path / "run", np.random.default_rng(1))
    (run / "metrics_test.json").unlink()
    with pytest.raises(InputError, match=r"medsight evaluate .* --split test"):
        write_report(run)
    with pytest.raises(InputError, match="is not a run folder"):
        write_report(tmp_path / "nowhere")
    with pytest.raises(InputError, match="--split val"):
        write_report(run, split="val")
    (run / "metrics_val.json").write_text("{not json")
    (run / "predictions_val.csv").write_text("case_id\nc0\n")
    with pytest.raises(InputError, match="cannot read the evaluation"):
        write_report(run, split="val")


def test_subgroups_are_scored_against_the_rest_and_a_weak_site_is_flagged():
    from sklearn.metrics import roc_auc_score

    from medsight.validation.report import subgroup_rows

    rng = np.random.default_rng(5)
    n = 240
    site = np.array(["A"] * 120 + ["B"] * 112 + ["C"] * 8)
    target = rng.integers(0, 2, n)
    signal = np.where(site == "B", 0.0, 2.5)  # the model knows nothing at site B
    prob = 1 / (1 + np.exp(-(signal * (target - 0.5) + rng.normal(0, 1, n))))
    table = pd.DataFrame({"case_id": [f"c{i}" for i in range(n)], "patient_id": [f"p{i // 2}" for i in range(n)],
                          "target": target, "prob": prob, "site": site, "age": rng.integers(30, 90, n)})  # fmt: skip
    rows = {(r["attribute"], r["group"]): r for r in subgroup_rows(table, bootstrap=300)}
    weak, strong = rows[("site", "B")], rows[("site", "A")]
    assert weak["below"] and not strong["below"]
    assert weak["auc"]["estimate"] == pytest.approx(roc_auc_score(target[site == "B"], prob[site == "B"]))
    assert weak["rest_auc"]["estimate"] == pytest.approx(roc_auc_score(target[site != "B"], prob[site != "B"]))
    assert weak["difference"]["high"] < 0 and weak["cases"] == 112
    assert "fewer than 10" in rows[("site", "C")]["undefined"]
    bands = {group for attribute, group in rows if attribute == "age_band"}
    assert bands <= {"<40", "40-49", "50-59", "60-69", "70-79", "80+"} and "<40" in bands


def test_measurements_with_a_reference_are_paired_for_bland_altman():
    from medsight.validation.report import _agreement_pairs

    table = pd.DataFrame({"volume_ml_LV": [100.0, 120.0, np.nan], "reference_volume_ml_LV": [90.0, 125.0, 80.0],
                          "reference_only": [1.0, 2.0, 3.0]})  # fmt: skip
    metrics = {"function": {"cases": [{"lv_ef": 55.0, "reference_lv_ef": 60.0, "lv_mass_g": 100.0},
                                      {"lv_ef": 40.0, "reference_lv_ef": 38.0, "lv_mass_g": 90.0}],
                            "lv_ef": {"mae": {"estimate": 3.5}}}}  # fmt: skip
    pairs = _agreement_pairs(metrics, table)
    assert [name for name, _, _ in pairs] == ["lv_ef", "volume_ml_LV"]  # EF first; no reference, no pair
    assert pairs[0][1].tolist() == [55.0, 40.0] and pairs[0][2].tolist() == [60.0, 38.0]
    assert _agreement_pairs({}, table.iloc[1:]) == []  # one known pair is not enough for limits


def test_the_checklist_checks_the_partition_by_patient(tmp_path):
    run = _run(tmp_path / "run", np.random.default_rng(2))
    checklist = {c["item"]: c for c in build_report(run)["checklist"]}
    partition = "Partition into training, validation and test sets, by patient"
    assert checklist[partition]["status"] == "not known"  # no splits.csv
    assert checklist["Reference standard and how it was established"]["status"] == "not known"
    assert checklist["Calibration"]["status"] == checklist["Performance in subgroups"]["status"] == "reported"
    splits = pd.DataFrame({"case_id": ["a", "b", "c", "d"], "patient_id": ["p1", "p1", "p2", "p3"],
                           "split": ["train", "test", "train", "val"]})  # fmt: skip
    splits.to_csv(run / "splits.csv", index=False)
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    content = build_report(run)
    leaked = {c["item"]: c for c in content["checklist"]}[partition]
    assert leaked["status"] == "failed" and "1 patient(s) in more than one split" in leaked["where"]
    assert content["training"]["splits"]["train"] == {"cases": 2, "patients": 2}
    assert content["training"]["epochs_run"] == 2
    splits.assign(patient_id=["p1", "p4", "p2", "p3"]).to_csv(run / "splits.csv", index=False)
    kept = {c["item"]: c for c in build_report(run)["checklist"]}[partition]
    assert kept["status"] == "checked" and "test 1 cases / 1 patients" in kept["where"]
    assert "Reporting checklist" in check_page(write_report(run)).headings


def test_a_risk_models_subgroups_are_scored_by_their_c_index():
    import numpy as np
    import pandas as pd

    from medsight.metrics.survival import harrell_c
    from medsight.validation.report import survival_subgroup_rows

    rng = np.random.default_rng(0)
    n = 80
    risk = rng.normal(size=n)
    sex = np.where(np.arange(n) % 2 == 0, "F", "M")
    time = rng.exponential(np.exp(-np.where(sex == "F", risk, 0.0)))  # risk only informs the women's outcome
    table = pd.DataFrame({"patient_id": [f"p{i}" for i in range(n)], "sex": sex, "years": time,
                          "event": (rng.random(n) < 0.8).astype(int), "risk": risk})  # fmt: skip
    table.loc[:2, "site"] = "small"  # a group too small to score
    table["site"] = table["site"].fillna("big")
    metrics = {"time_column": "years", "event_column": "event"}
    rows = {(r["attribute"], r["group"]): r for r in survival_subgroup_rows(table, metrics, bootstrap=50)}
    women = table["sex"] == "F"
    expected = harrell_c(table.years[women], table.event[women], table.risk[women])
    assert rows[("sex", "F")]["auc"]["estimate"] == pytest.approx(expected)
    assert rows[("sex", "F")]["rest_auc"]["estimate"] == pytest.approx(
        harrell_c(table.years[~women], table.event[~women], table.risk[~women])
    )
    assert rows[("sex", "M")]["below"] and not rows[("sex", "F")]["below"]
    assert "fewer than 10 cases" in rows[("site", "small")]["undefined"]
    assert survival_subgroup_rows(table.drop(columns="risk"), metrics) == []


def test_the_worst_segmented_images_are_those_of_lowest_mean_dice():
    from medsight.validation.gallery3d import _slice_index, worst_segmented

    table = pd.DataFrame({"case_id": ["a", "b", "c", "d", "e"],
                          "dice_WT": [0.9, 0.2, np.nan, 0.5, np.nan],
                          "dice_ET": [0.8, np.nan, 0.1, 0.5, np.nan],  # e: nothing defined, left out
                          "hd95_WT": [1.0, 2.0, 3.0, 4.0, 5.0]})  # fmt: skip
    worst = worst_segmented(table, 3)
    assert worst["case_id"].tolist() == ["c", "b", "d"]
    np.testing.assert_allclose(worst["mean_dice"], [0.1, 0.2, 0.5])
    assert worst_segmented(table, 10)["case_id"].tolist() == ["c", "b", "d", "a"]
    assert worst_segmented(table.drop(columns=["dice_WT", "dice_ET"]), 3).empty
    assert worst_segmented(table.iloc[:0], 3).empty
    reference = np.zeros((5, 4, 4), np.uint8)
    reference[1, :2] = 1
    reference[3, :3] = 2
    predicted = np.zeros_like(reference)
    predicted[4] = 1
    assert _slice_index(reference, predicted) == 3  # the most reference voxels of any structure
    assert _slice_index(np.zeros_like(reference), predicted) == 4  # an empty reference: the prediction's
    assert _slice_index(np.zeros_like(reference), np.zeros_like(reference)) == 2


def test_gallery_maps_of_a_run_that_cannot_be_loaded_are_left_out(tmp_path, caplog):
    from medsight.explain import GalleryMaps

    image = Volume(np.zeros((1, 1, 8, 8), np.uint8))
    maps = GalleryMaps(tmp_path / "no-run")
    with caplog.at_level("INFO", logger="medsight.explain.gallery"):
        assert maps([image], "score") is None
    assert "without explanations" in caplog.text and maps.failed
    assert maps([image], "score") is None and maps([], "score") is None  # not tried again


def test_gallery_thumbnail_shows_monochrome1_as_a_viewer_does(testdata):
    from medsight.io import read
    from medsight.validation.report import _thumbnail

    path = Path(testdata("RG1_UNCI.dcm"))
    volume, picture = _thumbnail(path)
    assert volume.metadata.monochrome1_inverted  # the very image the Grad-CAM maps are computed on
    raw = read(path).array[0, 0].astype(float)
    assert np.corrcoef(picture.ravel(), raw.ravel())[0, 1] < -0.9  # white is high, unlike the stored pixels
    assert picture.min() >= 0 and picture.max() <= 1
    assert _thumbnail(path.with_name("missing.dcm")) is None
