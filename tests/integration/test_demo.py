"""The demo's whole chain (phantoms -> manifest -> split -> train -> evaluate -> summary) in quick mode."""

from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest
from typer.testing import CliRunner

from medsight.cli.main import app
from tests.validation.test_report import check_page


@pytest.fixture(autouse=True)
def _an_avx2_cpu(monkeypatch):
    """The plans below are checked against the 15-minute budget of an AVX2 CPU, whatever runs them."""
    import medsight.engine.tuning

    monkeypatch.setattr(medsight.engine.tuning, "cpu_class", lambda: "AVX2")


@pytest.mark.slow
def test_quick_demo_runs_every_recipe(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert [r["recipe"] for r in summary] == ["dr-grading", "dr-grading", "cxr-findings", "mammo-screening",
                                              "brain-tumor-seg", "brain-tumor-seg", "cardiac-function",
                                              "cardiac-risk", "mammo-risk", "lung-nodule-det"]  # fmt: skip
    recipes = ("dr-grading", "cxr-findings", "mammo-screening", "brain-tumor-seg", "cardiac-function", "cardiac-risk",
               "mammo-risk", "lung-nodule-det")  # fmt: skip
    for recipe in recipes:
        assert (tmp_path / "demo" / "runs" / recipe / "metrics_test.json").is_file()
    # the risk cohort was measured by the cardiac model and joined with its clinical table
    risk = pd.read_csv(tmp_path / "demo" / "cardiac-risk.csv")
    assert {"lv_ef", "lv_mass_g", "age", "sex", "years", "event"} <= set(risk.columns)
    mammo = pd.read_csv(tmp_path / "demo" / "mammo-risk.csv")  # the mammography exams again, with their follow-up
    assert {"age", "family_history", "years", "event", "image"} <= set(mammo.columns) and len(mammo) == 4 * 24
    assert not (tmp_path / "demo" / "data" / "mammo-risk").exists()  # no second phantom
    ef = next(r for r in summary if r["recipe"] == "cardiac-function")
    assert ef["label"] == "cardiac LV EF MAE (points)" and ef["lower_is_better"] and ef["target"] == 5.0
    lung = next(r for r in summary if r["recipe"] == "lung-nodule-det")  # LUNA16's CPM, from its candidates
    assert lung["label"].startswith("lung nodule CPM") and lung["target"] == 0.8 and 0 <= lung["estimate"] <= 1
    assert "medsight demo" in result.output and "done in" in result.output
    index = (tmp_path / "demo" / "index.html").read_text()
    for recipe in recipes:
        assert f'href="runs/{recipe}/report.html"' in index
        page = check_page(tmp_path / "demo" / "runs" / recipe / "report.html")
        explained = (tmp_path / "demo" / "runs" / recipe / "explain" / "explanations.json").is_file()
        assert explained == (not recipe.endswith("-risk"))  # every image model; the risk models read features
        assert ("Explanations" in page.headings) == explained
        if recipe in ("brain-tumor-seg", "cardiac-function"):  # the worst volumes, segmented again
            assert "Failure gallery" in page.headings
    assert "validation reports:" in result.output


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
    with pytest.raises(ConfigError, match="quick, standard, lean, long"):
        run_demo(tmp_path / "d", profile="huge")
    standard = {step.recipe: step.cases for step in DEMO}
    assert all(cases > standard[recipe] for recipe, (cases, _) in LONG.items())  # long means more, never less


def test_summary_fits_an_80_column_terminal():
    from rich.console import Console

    from medsight.cli.pipeline import demo_table
    from medsight.validation.demo import DemoRow

    rows = [DemoRow("mammo-screening", "mammography exam AUC", 0.466, 0.255, 0.689, 0.85, 1.0),
            DemoRow("dr-grading", "referable-DR AUC", 0.971, 0.926, 1.0, 0.9, 1.0)]  # fmt: skip
    console = Console(width=80, record=True, color_system=None)
    console.print(demo_table(rows))
    lines = console.export_text().splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert any("0.466 [0.255, 0.689]" in line and "below" in line for line in lines)
    assert any("0.971 [0.926, 1.000]" in line and "met" in line for line in lines)
    # the longest names and widest intervals: the name folds, the interval and the verdict stay whole
    rows = [DemoRow("mammo-risk", "mammography risk C-index (Harrell)", 0.641, 0.0, 1.0, 0.65, 1.0),
            DemoRow("cardiac-function", "cardiac LV EF MAE (points)", 55.517, 29.886, 81.149, 5.0, 1.0,
                    lower_is_better=True)]  # fmt: skip
    console = Console(width=80, record=True, color_system=None)
    console.print(demo_table(rows))
    lines = console.export_text().splitlines()
    assert all(len(line) <= 80 for line in lines) and not any("…" in line for line in lines)
    assert any("0.641 [0.000, 1.000]" in line and "below" in line for line in lines)
    assert any("55.517 [29.886, 81.149]" in line and "above" in line for line in lines)


def test_an_error_meets_its_target_from_below():
    from rich.console import Console

    from medsight.cli.pipeline import demo_table
    from medsight.validation.demo import DemoRow

    good = DemoRow("cardiac-function", "cardiac LV EF MAE (points)", 2.9, 2.0, 4.2, 5.0, 1.0, lower_is_better=True)
    bad = DemoRow("cardiac-function", "cardiac LV EF MAE (points)", 6.2, 1.1, 15.4, 5.0, 1.0, lower_is_better=True)
    assert good.met and not bad.met
    console = Console(width=80, record=True, color_system=None)
    console.print(demo_table([good, bad]))
    lines = console.export_text().splitlines()
    assert any("2.900 [2.000, 4.200]" in line and "<= 5" in line and "met" in line for line in lines)
    assert any("6.200 [1.100, 15.400]" in line and "<= 5" in line and "above" in line for line in lines)


def test_a_subset_without_2d_recipes_is_still_timed_by_the_2d_probe(monkeypatch):
    from medsight.validation import demo

    probed = []
    monkeypatch.setattr(demo, "_probe", lambda step, extra: probed.append(step.recipe) or _measured(90.0))
    plan = demo.plan_demo("standard", recipes=["cardiac-function"])
    assert probed == ["dr-grading"] and [s.recipe for s, _, _ in plan.steps] == ["cardiac-function"]
    assert plan.estimated_seconds is not None and plan.estimated_seconds < 5 * 60


LONGEST = "lung-nodule-det"  # its step alone overruns a 2-core CPU's budget


def _but_longest(steps):
    return tuple(s for s in steps if s[0].recipe != LONGEST)


def _measured(speed):
    from medsight.engine.tuning import NumericMode

    return NumericMode(None, True, "test", (("fp32, contiguous", speed * 0.9), ("fp32, channels-last", speed)))


def test_the_plan_fits_the_budget_on_a_slow_cpu_without_lowering_targets(monkeypatch):
    from medsight.core import ConfigError
    from medsight.validation import demo

    monkeypatch.setattr(demo, "_probe", lambda step, extra: _measured(90.0))
    fast = demo.plan_demo("standard")
    assert fast.profile == "standard" and fast.estimated_seconds < 15 * 60 and fast.reason == ""
    assert "~90 training images/s (fp32, channels-last)" in fast.describe()
    monkeypatch.setattr(demo, "_probe", lambda step, extra: _measured(66.0))
    slow = demo.plan_demo("standard")
    assert slow.profile == "lean" and "over the 15 min budget" in slow.reason
    assert [r for r, _ in fast.left_out] == [r for r, _ in slow.left_out] == [LONGEST]  # over the budget alone
    standard_there = demo._estimate(_but_longest(demo._steps("standard")), 66.0, 59.4, bf16=False)
    assert slow.estimated_seconds < standard_there and f"~{standard_there / 60:.0f} min" in slow.reason
    assert [s.headlines for s, _, _ in slow.steps] == [s.headlines for s in demo.DEMO if s.recipe != LONGEST]
    assert demo.plan_demo("standard", budget_minutes=600).profile == "standard"  # a generous budget keeps it
    assert demo.plan_demo("long").profile == "long"  # asked for explicitly: never shrunk
    quick = demo.plan_demo("quick")
    assert quick.estimated_seconds is None and [c for _, c, _ in quick.steps] == [
        s.quick_cases or max(12, s.cases // 25) for s in demo.DEMO
    ]
    with pytest.raises(ConfigError, match="positive number of minutes"):
        demo.plan_demo("standard", budget_minutes=0)


@pytest.mark.parametrize(("cpu", "minutes"), [("AMX", 10), ("AVX-512 BF16", 10), ("AVX-512", 10), ("AVX2", 15),
                                              ("aarch64 DEFAULT", 15)])  # fmt: skip
def test_the_budget_is_10_minutes_on_avx512_and_15_elsewhere_unless_given(monkeypatch, cpu, minutes):
    import medsight.engine.tuning
    from medsight.validation import demo

    monkeypatch.setattr(medsight.engine.tuning, "cpu_class", lambda: cpu)
    monkeypatch.setattr(demo, "_probe", lambda step, extra: _measured(90.0))
    assert demo.default_budget_minutes(cpu) == minutes
    plan = demo.plan_demo("standard")
    assert plan.budget_seconds == minutes * 60 and plan.estimated_seconds <= minutes * 60
    assert f"of its {minutes} min budget" in plan.describe()
    standard = demo._estimate(_but_longest(demo._steps("standard")), 90.0, 81.0, bf16=False)
    assert plan.profile == ("standard" if standard <= minutes * 60 else "lean")
    assert LONGEST in dict(plan.left_out)
    assert demo.plan_demo("standard", budget_minutes=600).budget_seconds == 600 * 60  # given: kept


def test_a_cpu_too_slow_for_the_lean_demo_runs_the_recipes_that_fit_and_names_the_others(monkeypatch):
    from medsight.validation import demo

    monkeypatch.setattr(demo, "_probe", lambda step, extra: _measured(12.0))
    plan = demo.plan_demo("standard")
    ran = [s.recipe for s, _, _ in plan.steps]
    left = [recipe for recipe, _ in plan.left_out]
    assert plan.profile == "lean" and left and sorted(ran + left) == sorted(s.recipe for s in demo.DEMO)
    assert plan.estimated_seconds <= 15 * 60
    lean = {s.recipe: (s, c, e) for s, c, e in demo._steps("lean")}
    for recipe, seconds in plan.left_out:  # each left out would overrun the budget beside those kept
        assert seconds == pytest.approx(demo._estimate((lean[recipe],), 12.0, 10.8, bf16=False))
        assert plan.estimated_seconds + seconds > 15 * 60
    text = plan.describe()
    assert "left out to fit the budget" in text and f"--recipes {','.join(left)}" in text
    assert all(s.headlines == next(d for d in demo.DEMO if d.recipe == s.recipe).headlines for s, _, _ in plan.steps)
    named = demo.plan_demo("standard", recipes=left)  # recipes the user names all run, over the budget or not
    needed = [s.recipe for s in demo.DEMO if s.recipe in left or any(d.features_from == s.recipe for d in demo.DEMO
                                                                     if d.recipe in left)]  # fmt: skip
    assert [s.recipe for s, _, _ in named.steps] == needed and named.left_out == ()
    assert demo.plan_demo("standard", budget_minutes=600).left_out == ()


def test_a_risk_step_runs_with_the_step_that_measures_its_cases(monkeypatch):
    from medsight.validation import demo

    monkeypatch.setattr(demo, "_probe", lambda step, extra: _measured(90.0))
    plan = demo.plan_demo("standard", recipes=["cardiac-risk"])  # its features come from the cardiac model
    assert [s.recipe for s, _, _ in plan.steps] == ["cardiac-function", "cardiac-risk"]
    for speed in (12.0, 25.0, 40.0, 58.0):  # a budget that leaves steps out never keeps risk without its measures
        monkeypatch.setattr(demo, "_probe", lambda step, extra, speed=speed: _measured(speed))
        kept = [s.recipe for s, _, _ in demo.plan_demo("standard").steps]
        assert "cardiac-risk" not in kept or "cardiac-function" in kept


def test_a_lean_plan_probing_resnet10_counts_its_speed_once(monkeypatch):
    """Planned directly, the lean demo probes ResNet-10 (1.85x ResNet-18 in the time model): its
    estimate is the one the standard plan makes for the lean steps on the same CPU."""
    from medsight.validation import demo

    probed = []

    def probe(step, extra):
        model = demo._recipe(step, extra, 0).model.name
        probed.append(model)
        return _measured(40.0 * demo._MODEL_SPEED.get(model, 1.0))  # one CPU: ResNet-18 at 40 img/s

    monkeypatch.setattr(demo, "_probe", probe)
    lean = demo.plan_demo("lean", budget_minutes=600)
    standard = demo.plan_demo("standard", budget_minutes=600)
    assert probed == ["resnet10", "resnet18"] and lean.profile == "lean" and standard.profile == "standard"
    assert lean.images_per_second == pytest.approx(40.0)
    assert lean.estimated_seconds == pytest.approx(demo._estimate(demo._steps("lean"), 40.0, 36.0, bf16=False))
    assert lean.estimated_seconds == pytest.approx(sum(standard.seconds(s) for s in demo._steps("lean")))


def test_the_time_model_counts_validated_epochs_and_larger_explained_views():
    from medsight.engine import TrainConfig
    from medsight.validation import demo

    assert [TrainConfig(epochs=e, validate_every=5).validations for e in (1, 5, 10, 12, 14, 15)] == [1, 1, 2, 3, 3, 3]
    assert TrainConfig(epochs=7, validate_every=1).validations == 7
    ref = demo._REFERENCE_FP32
    assert demo._reporting("mammo-screening", ref, 384) == pytest.approx(demo._REPORTING_S["mammo-screening"] * 2.25)
    assert demo._reporting("mammo-screening", ref / 2, 256) == pytest.approx(2 * demo._REPORTING_S["mammo-screening"])
    assert demo._reporting("dr-grading", ref, 512) == pytest.approx(demo._REPORTING_S["dr-grading"])
    step = next(s for s in demo._steps("standard") if s[0].recipe == "mammo-screening")
    every = demo._estimate((step,), 80.0, 40.0)
    validating = demo._estimate(((step[0], step[1], (*step[2], "train.validate_every=1")),), 80.0, 40.0)
    assert validating > every  # 15 validations of 102 views instead of 3


def test_fit_keeps_the_most_steps_and_at_least_one():
    from medsight.validation import demo

    steps = demo._steps("lean")
    seconds = [500.0, 300.0, 200.0, 350.0, 100.0, 80.0, 900.0, 2000.0]
    costs = dict(zip([s.recipe for s, _, _ in steps], seconds, strict=True))
    kept, left = demo._fit(steps, 600, lambda s: costs[s[0].recipe])
    assert [s.recipe for s, _, _ in kept] == ["cxr-findings", "mammo-screening", "cardiac-function"]  # 3 fit, earliest
    assert left == (("dr-grading", 500.0), ("brain-tumor-seg", 350.0), ("cardiac-risk", 80.0), ("mammo-risk", 900.0),
                    ("lung-nodule-det", 2000.0))  # fmt: skip
    kept, left = demo._fit(steps, 50, lambda s: costs[s[0].recipe])
    # the quickest that can run alone (the risk step needs the cardiac model's measures)
    assert [s.recipe for s, _, _ in kept] == ["cardiac-function"] and len(left) == 7
    kept, left = demo._fit(steps, 180, lambda s: costs[s[0].recipe])
    assert [s.recipe for s, _, _ in kept] == ["cardiac-function", "cardiac-risk"]
    kept, left = demo._fit(steps, sum(seconds), lambda s: costs[s[0].recipe])
    assert len(kept) == 8 and left == ()


def test_the_probe_measures_the_model_training_will_use(tmp_path, monkeypatch):
    """The probe's batch has the shape training's first batch has, so training finds the mode cached."""
    from medsight.engine import tuning
    from medsight.validation import demo

    monkeypatch.setenv("MEDSIGHT_CACHE_DIR", str(tmp_path))
    shapes = []
    monkeypatch.setattr(tuning, "_speeds", lambda m, inputs, t, f, modes: shapes.append(tuple(inputs.shape))
                        or {x.label: 10.0 for x in modes})  # fmt: skip
    step, _, extra = demo._steps("standard")[0]
    mode = demo._probe(step, extra)
    assert mode.images_per_second == 10.0 and set(shapes) == {(16, 3, 128, 128)}


@pytest.mark.slow
def test_recipes_runs_a_subset_and_a_typo_is_named(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--quick", "--recipes", "cxr-findings", "--out", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert [r["recipe"] for r in summary] == ["cxr-findings"] and not (tmp_path / "d" / "runs" / "dr-grading").exists()
    typo = CliRunner().invoke(app, ["demo", "--quick", "--recipes", "cxr-finding", "--out", str(tmp_path / "e")])
    assert typo.exit_code == 1 and "--recipes takes some of dr-grading, cxr-findings, mammo-screening" in typo.output
    assert "brain-tumor-seg, cardiac-function" in typo.output


def test_a_3d_step_is_timed_by_the_patches_it_draws():
    from medsight.validation import demo

    (standard,) = demo._steps("standard", ["cardiac-function"])
    step, cases, extra = standard
    half = (step, cases, (*extra, "preprocess.overrides.batch_size=2"))
    full, halved = demo._estimate((standard,), 82.8, 47.3), demo._estimate((half,), 82.8, 47.3)
    cost = step.volumetric
    epochs = demo._recipe(step, extra, 0).train.epochs
    assert full - halved == pytest.approx(cost.epoch_s * epochs / 2)  # half the patches, half the training
    fixed = cases * cost.phantom_s_per_case + demo._reporting(step.recipe, 47.3)  # not training: fp32 speed
    slower = demo._estimate((standard,), 82.8 / 2, 47.3)
    assert slower > 1.8 * full - fixed  # a CPU half as fast trains half as fast
    fp32 = demo._estimate((standard,), 82.8, 47.3, bf16=False)  # 3D training in fp32 costs more against the probe
    assert fp32 - full == pytest.approx((full - fixed) * (demo._FP32_3D - 1))
    dr = demo._steps("standard", ["dr-grading"])
    assert demo._estimate(dr, 82.8, 47.3, bf16=False) == demo._estimate(dr, 82.8, 47.3)  # 2D follows the probe


def _plan(monkeypatch, speed=90.0, **kwargs):
    from medsight.validation import demo

    monkeypatch.setattr(demo, "_probe", lambda step, extra: _measured(speed))
    return demo.plan_demo("standard", **kwargs)


def test_a_demo_on_time_is_not_replanned(monkeypatch):
    from medsight.validation import demo

    plan = _plan(monkeypatch)
    first = plan.seconds(plan.steps[0])
    assert first > 0
    assert demo.replan(plan, [first], first) is None  # as estimated
    assert demo.replan(plan, [0.5 * first], 0.5 * first) is None  # faster
    assert demo.replan(plan, [1.04 * first], 1.04 * first) is None  # within the estimate's spread
    everything = [plan.seconds(step) * 3 for step in plan.steps]
    assert demo.replan(plan, everything, sum(everything)) is None  # nothing left to re-plan
    for profile in ("quick", "long"):  # never shrunk
        assert demo.replan(replace(plan, profile=profile), [3 * first], 3 * first) is None


def test_a_demo_running_slow_turns_lean_for_the_rest_with_the_same_targets(monkeypatch):
    from medsight.validation import demo

    plan = _plan(monkeypatch)
    assert plan.profile == "standard" and plan.estimated_seconds < 15 * 60
    first = plan.seconds(plan.steps[0])
    slow = 1.25 * first  # the machine got busier than the probe saw
    spent = {"cxr-findings": 30.0, "brain-tumor-seg": 20.0}  # their phantoms, made before the first step
    changed, message = demo.replan(plan, [slow], slow + 50.0, prepaid=spent)
    assert changed.profile == "lean" and changed.left_out == plan.left_out  # only what overran the budget alone
    lean = {s.recipe: (s, c, e) for s, c, e in demo._steps("lean")}
    assert changed.steps[0] == plan.steps[0]  # what ran stays as it ran
    assert changed.steps[1:] == tuple(lean[s.recipe] for s, _, _ in plan.steps[1:])
    assert [s.headlines for s, _, _ in changed.steps] == [s.headlines for s in demo.DEMO if s.recipe != LONGEST]
    rest = sum(changed.seconds(step) for step in changed.steps[1:])
    assert changed.estimated_seconds == pytest.approx(slow + 50.0 + 1.25 * rest - 50.0)  # spent once, not twice
    assert "1.25x slower than estimated" in message and "lean settings" in message
    assert f"~{round(changed.estimated_seconds / 60)} min" in message and changed.reason == message


def test_a_demo_running_far_too_slow_leaves_out_what_no_longer_fits(monkeypatch):
    from medsight.validation import demo

    plan = _plan(monkeypatch)
    first = plan.seconds(plan.steps[0])
    changed, message = demo.replan(plan, [4 * first], 4 * first)
    kept, left = [s.recipe for s, _, _ in changed.steps], [recipe for recipe, _ in changed.left_out]
    assert left and sorted(kept + left) == sorted(s.recipe for s in demo.DEMO) and kept[0] == "dr-grading"
    assert changed.estimated_seconds <= 15 * 60 and "left out" in message
    for recipe, seconds in set(changed.left_out) - set(plan.left_out):  # at its scaled estimate, over the rest
        step = next(s for s in demo._steps("lean") if s[0].recipe == recipe)
        assert seconds == pytest.approx(4 * changed.seconds(step))
        assert changed.estimated_seconds + seconds > 15 * 60
    assert f"--recipes {','.join(left)}" in changed.left_out_note()
    spent = {s.recipe: 25.0 for s, _, _ in plan.steps[1:]}  # phantoms made: only what is kept gets them back
    paid, _ = demo.replan(plan, [4 * first], 4 * first + 100.0, prepaid=spent)
    assert paid.estimated_seconds <= 15 * 60
    for recipe, seconds in set(paid.left_out) - set(plan.left_out):
        step = next(s for s in demo._steps("lean") if s[0].recipe == recipe)
        assert seconds == pytest.approx(4 * paid.seconds(step) - 25.0)
    gone = demo.replan(plan, [20 * first], 20 * first)[0]  # the budget is spent: nothing more runs
    assert [s.recipe for s, _, _ in gone.steps] == ["dr-grading"] and len(gone.left_out) == 7
    named = _plan(monkeypatch, recipes=["dr-grading", "brain-tumor-seg"])  # named recipes all run, lean if need be
    changed, _ = demo.replan(named, [20 * first], 20 * first)
    assert [s.recipe for s, _, _ in changed.steps] == ["dr-grading", "brain-tumor-seg"] and changed.left_out == ()
    assert demo.replan(changed, [20 * first], 20 * first) is None  # lean already: nothing more to do
    done = [s.recipe for s in demo.DEMO].index("cardiac-function")
    everything_but_cardiac = [plan.seconds(step) * 1.5 for step in plan.steps[:done]]
    last = demo.replan(plan, everything_but_cardiac, 15 * 60 - 30.0)[0]  # half a minute left: no lean cardiac
    rest = plan.steps[done:]
    scaled = tuple((s.recipe, pytest.approx(1.5 * plan.seconds((s, c, e)))) for s, c, e in rest)
    assert last.left_out == (*scaled, *plan.left_out)
    assert "lean settings" not in last.reason and "cardiac-function, cardiac-risk, mammo-risk left out" in last.reason
    tight = _plan(monkeypatch, speed=14.0)  # a slow CPU: lean from the start, some recipes left out already
    assert tight.profile == "lean" and tight.left_out
    gone = demo.replan(tight, [4 * tight.seconds(tight.steps[0])], 4 * tight.seconds(tight.steps[0]))[0]
    order = [s.recipe for s in demo.DEMO]
    left = [recipe for recipe, _ in gone.left_out]
    assert set(left) == set(order[1:]) and left == order[1:]  # every one named once, in the demo's order


def _fake_training(monkeypatch, demo, fit):
    """The demo loop with ``fit`` for training and evaluation, report and index faked."""
    from types import SimpleNamespace

    figure = SimpleNamespace(estimate=0.9, low=0.8, high=1.0)
    monkeypatch.setattr(demo, "fit", fit)
    monkeypatch.setattr(demo, "evaluate_run", lambda run, progress=None: SimpleNamespace(figure=lambda n: figure))
    monkeypatch.setattr(demo, "write_report", lambda run, explainer=None: run / "report.html")
    monkeypatch.setattr(demo, "write_index", lambda page, pages, title: page)


def test_the_demo_loop_follows_a_new_plan(monkeypatch, tmp_path):
    """After a step that ran slow, the next steps train with the re-planned settings and the
    command learns why."""
    from types import SimpleNamespace

    from medsight.validation import demo

    plan = _plan(monkeypatch, recipes=["dr-grading", "cxr-findings", "brain-tumor-seg"])
    now = [0.0]
    monkeypatch.setattr(demo.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(demo, "phantom_data", lambda *a, **k: False)
    monkeypatch.setattr(demo, "build_manifest", lambda *a, **k: None)
    monkeypatch.setattr(demo, "assign_splits", lambda *a, **k: SimpleNamespace(save=lambda path: None))
    trained = []
    slow = 4.0 * plan.seconds(plan.steps[0])

    def fake_fit(recipe, manifest, run, progress=None):
        trained.append((recipe.model.name, recipe.train.epochs))
        now[0] += slow if len(trained) == 1 else 10.0

    _fake_training(monkeypatch, demo, fake_fit)
    told = []
    rows = demo.run_demo(tmp_path, plan=plan, on_replan=lambda p, m: told.append((p.profile, m)))
    assert trained[0] == ("resnet18", 14) and trained[1] == ("resnet10", 14)  # CXR trained lean after the slow DR
    assert [p for p, _ in told] == ["lean"] and "slower than estimated" in told[0][1]
    assert {r.recipe for r in rows} == {"dr-grading", "cxr-findings", "brain-tumor-seg"}
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert timings["plan"]["profile"] == "lean" and timings["plan"]["replanned"] == [told[0][1]]


def test_the_command_prints_a_new_plan_and_what_it_left_out(monkeypatch, tmp_path):
    from medsight.validation import demo

    plan = _plan(monkeypatch)
    monkeypatch.setattr(demo, "plan_demo", lambda *a, **k: plan)
    row = demo.DemoRow("dr-grading", "referable-DR AUC", 0.95, 0.9, 1.0, 0.9, 1.0)

    def run(out, *, seed, progress, plan, on_replan, explain, explainer):
        changed, message = demo.replan(plan, [20 * plan.seconds(plan.steps[0])], 20 * plan.seconds(plan.steps[0]))
        on_replan(changed, message)
        return [row]

    monkeypatch.setattr(demo, "run_demo", run)
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d")], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "slower than estimated" in text and "left out to fit the budget: cxr-findings" in text
    assert "--recipes cxr-findings,mammo-screening,brain-tumor-seg,cardiac-function" in text


def test_a_demo_running_fast_takes_back_what_the_start_left_out(monkeypatch):
    """A probe on a busy machine (or cached from one) leaves recipes out; the time the first steps
    save brings them back, at their full estimates, last and in the demo's order."""
    from medsight.validation import demo

    plan = _plan(monkeypatch, speed=25.0)
    assert plan.profile == "lean" and plan.left_out
    order = [s.recipe for s in demo.DEMO]
    first = plan.seconds(plan.steps[0])
    assert demo.take_back(plan, [first], first) is None  # as estimated
    assert demo.take_back(plan, [2 * first], 2 * first) is None  # slower: replan's business
    saved = [0.5 * plan.seconds(step) for step in plan.steps]  # every step so far took half its estimate
    elapsed = sum(saved)
    changed, message = demo.take_back(plan, saved, elapsed)
    back = changed.steps[len(plan.steps) :]
    names = [s.recipe for s, _, _ in back]
    assert names and changed.steps[: len(plan.steps)] == plan.steps and names == sorted(names, key=order.index)
    lean = {s.recipe: (s, c, e) for s, c, e in demo._steps("lean")}
    assert list(back) == [lean[name] for name in names]  # the lean settings, same targets
    assert sorted(names + [r for r, _ in changed.left_out]) == sorted(r for r, _ in plan.left_out)
    ran = [s.recipe for s, _, _ in changed.steps]
    assert all(s.features_from is None or s.features_from in ran[:i] for i, (s, _, _) in enumerate(changed.steps))
    rest = sum(plan.seconds(step) for step in back)
    assert changed.estimated_seconds == pytest.approx(elapsed + rest) and changed.estimated_seconds <= 15 * 60
    assert "0.50x its estimate" in message and "budget after all" in message and changed.reason == message
    assert demo.take_back(changed, saved, elapsed) is None  # what is back runs once; nothing more fits
    assert demo.take_back(plan, saved, 15 * 60 - 1) is None  # the budget is spent: nothing comes back
    one = demo.take_back(plan, [0.5 * first], 0.5 * first)  # one quick step saves too little for much
    assert one is None or len(one[0].steps) - len(plan.steps) < len(names)
    for profile in ("quick", "long"):
        assert demo.take_back(replace(plan, profile=profile), saved, elapsed) is None
    assert demo.take_back(replace(plan, named=True), saved, elapsed) is None
    assert demo.take_back(replace(plan, left_out=()), saved, elapsed) is None


def test_the_demo_loop_runs_what_it_takes_back(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from medsight.validation import demo

    plan = _plan(monkeypatch, speed=25.0)
    assert plan.left_out
    now = [0.0]
    monkeypatch.setattr(demo.time, "perf_counter", lambda: now[0])
    made = []
    monkeypatch.setattr(demo, "phantom_data", lambda name, folder, **k: made.append(folder.name) or False)
    monkeypatch.setattr(demo, "_step_manifest", lambda *a, **k: SimpleNamespace(save=lambda path: None))
    trained = []

    def fake_fit(recipe, manifest, run, progress=None):  # every step in a tenth of its estimate
        step = next(s for s in plan.steps + demo._steps("lean") if s[0].recipe == recipe.name)
        trained.append(recipe.name)
        now[0] += 0.1 * plan.seconds(step)

    _fake_training(monkeypatch, demo, fake_fit)
    told = []
    demo.run_demo(tmp_path, plan=plan, on_replan=lambda p, m: told.append(m))
    first = [s.recipe for s, _, _ in plan.steps]
    timings = json.loads((tmp_path / "timings.json").read_text())
    back, still = trained[len(first) :], timings["plan"]["left_out"]
    assert trained[: len(first)] == first and sorted(back + still) == sorted(r for r, _ in plan.left_out)
    assert still == [LONGEST]  # too long for what the others saved
    assert told and all("budget after all" in m for m in told)
    for recipe in back:  # their phantoms made when they started, counted in their step
        assert timings[recipe]["phantoms_s"] == 0.0 and "train_s" in timings[recipe]
    assert timings["plan"]["replanned"] == told


def test_a_recipe_over_the_budget_alone_is_left_out_first_with_what_it_measures(monkeypatch):
    """The others keep their standard settings where they then fit: one long recipe does not make
    the whole demo lean."""
    from medsight.validation import demo

    costs = {s.recipe: 60.0 for s in demo.DEMO} | {"cardiac-function": 2000.0}
    monkeypatch.setattr(demo, "_estimate", lambda steps, *a, **k: sum(costs[s[0].recipe] for s in steps))
    plan = _plan(monkeypatch)
    assert plan.profile == "standard" and plan.reason == "" and plan.estimated_seconds == 60.0 * 6
    assert plan.left_out == (("cardiac-function", 2000.0), ("cardiac-risk", 60.0))  # the risk step needs its measures
    assert "--recipes cardiac-function,cardiac-risk" in plan.left_out_note()
    costs.update({"dr-grading": 400.0, "cxr-findings": 400.0})  # the rest overrun too: lean, and what fits
    tight = _plan(monkeypatch)
    assert tight.profile == "lean" and "cardiac-function" in dict(tight.left_out)
    assert "would take ~17 min" in tight.reason  # the demo without what could never fit
    named = _plan(monkeypatch, recipes=["cardiac-function"])  # named: it runs
    assert [s.recipe for s, _, _ in named.steps] == ["cardiac-function"] and named.left_out == ()
