"""The risk task: Cox and discrete-time losses against hand computation and scikit-survival, the feature
coding and its errors, and a model trained through the seam on cohorts with a known hazard."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from medsight.core.errors import ConfigError, InputError
from medsight.data.manifest import Manifest
from medsight.engine.fit import fit
from medsight.engine.recipe import load_recipe
from medsight.inference import Predictor
from medsight.metrics.survival import cumulative_dynamic_auc, harrell_c, uno_c
from medsight.tasks import task_for
from medsight.tasks.risk import (
    RiskPlan,
    RiskPreprocess,
    breslow_cumulative_hazard,
    cox_loss,
    encode_features,
    logistic_hazard_loss,
    survival_curves,
)
from medsight.validation import evaluate_run

COEF = {"age": 0.04, "ef": -0.045, "male": 0.4}


def cohort(n: int, seed: int) -> pd.DataFrame:
    """Patients whose hazard follows ``COEF`` (exponential times, uniform censoring), one case each."""
    rng = np.random.default_rng(seed)
    age, ef = rng.uniform(30, 85, n), rng.uniform(15, 75, n)
    sex = rng.choice(["F", "M"], n)
    lp = COEF["age"] * (age - 60) + COEF["ef"] * (ef - 55) + COEF["male"] * (sex == "M")
    event_time, censor = rng.exponential(1 / (0.1 * np.exp(lp))), rng.uniform(1, 8, n)
    return pd.DataFrame({
        "case_id": [f"c{i}" for i in range(n)], "patient_id": [f"p{i}" for i in range(n)],
        "image": [f"img{i}.png" for i in range(n)], "age": age.round(1), "ef": ef.round(1), "sex": sex,
        "years": np.minimum(event_time, censor).round(3), "event": (event_time <= censor).astype(int),
    })  # fmt: skip


def _task(**spec):
    return task_for({"kind": "risk", "time": "years", "event": "event", "features": ["age", "ef", "sex"], **spec})


# --- losses ----------------------------------------------------------------------------------


def _partial_likelihood_by_hand(r, t, e):
    total = 0.0
    for i in range(len(t)):
        if e[i]:
            at_risk = [j for j in range(len(t)) if t[j] >= t[i]]
            total += r[i] - math.log(sum(math.exp(r[j]) for j in at_risk))
    return -total / sum(e)


def test_cox_loss_is_breslows_partial_likelihood_with_ties():
    rng = np.random.default_rng(0)
    t = rng.choice([1.0, 2.0, 2.0, 3.5, 4.0, 4.0, 4.0, 7.0], 30)  # many tied times, events and censorings
    e = rng.integers(0, 2, 30)
    r = rng.normal(0, 1, 30)
    got = float(cox_loss(torch.tensor(r), torch.tensor(t), torch.tensor(e)))
    assert got == pytest.approx(_partial_likelihood_by_hand(r, t, e), rel=1e-6)
    # no event: nothing to learn, and still differentiable
    none = cox_loss(torch.tensor(r, requires_grad=True), torch.tensor(t), torch.zeros(30))
    assert float(none.detach()) == 0.0 and none.requires_grad


def test_cox_fit_and_breslow_survival_equal_scikit_survival():
    sksurv = pytest.importorskip("sksurv.linear_model")
    table = cohort(300, seed=1)
    x = np.c_[(table.age - 60) / 15, (table.ef - 45) / 15, (table.sex == "M").astype(float)]
    t, e = table.years.to_numpy(), table.event.to_numpy()
    weight = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight], max_iter=200, tolerance_grad=1e-10, tolerance_change=1e-12)
    inputs, times, events = torch.tensor(x), torch.tensor(t), torch.tensor(e)

    def closure():
        optimiser.zero_grad()
        loss = cox_loss((inputs @ weight).double(), times, events)
        loss.backward()
        return loss

    optimiser.step(closure)
    reference = sksurv.CoxPHSurvivalAnalysis(ties="breslow").fit(
        x, np.array(list(zip(e == 1, t, strict=True)), dtype=[("e", bool), ("t", float)])
    )
    np.testing.assert_allclose(weight.detach().numpy(), reference.coef_, atol=1e-4)
    lp = x @ reference.coef_
    times, hazard = breslow_cumulative_hazard(lp + 3.0, t, e)  # an offset (a bias) cancels in S(t|x)
    expected = reference.predict_survival_function(x[:5])
    for k in range(5):
        for at in (0.5, 2.0, 5.0):
            h0 = hazard[np.searchsorted(times, at, side="right") - 1]
            assert math.exp(-h0 * math.exp(lp[k] + 3.0)) == pytest.approx(float(expected[k](at)), rel=1e-6)


def test_logistic_hazard_loss_and_survival_curves_by_hand():
    logits = torch.tensor([[0.0, 1.0, -1.0], [2.0, 0.5, 0.0]])
    interval, event = torch.tensor([1, 2]), torch.tensor([1, 0])
    h = torch.sigmoid(logits).numpy()
    case0 = -(math.log(1 - h[0, 0]) + math.log(h[0, 1]))  # survived 0, event in 1
    case1 = -(math.log(1 - h[1, 0]) + math.log(1 - h[1, 1]) + math.log(1 - h[1, 2]))  # censored in 2: survived it
    assert float(logistic_hazard_loss(logits, interval, event)) == pytest.approx((case0 + case1) / 2, rel=1e-6)
    edges = np.array([0.0, 1.0, 3.0, 5.0])
    curves = survival_curves(h, edges, np.array([1.0, 2.0, 5.0, 9.0]))
    s1 = 1 - h[:, 0]
    s2 = s1 * (1 - h[:, 1])
    np.testing.assert_allclose(curves[:, 0], s1)
    np.testing.assert_allclose(curves[:, 1], s1 + 0.5 * (s2 - s1))  # half-way through interval 1
    np.testing.assert_allclose(curves[:, 2], s2 * (1 - h[:, 2]))
    np.testing.assert_allclose(curves[:, 3], curves[:, 2])  # held after the last edge


# --- feature coding and user mistakes --------------------------------------------------------


def _manifest(table: pd.DataFrame, split=None) -> Manifest:
    table = table.copy()
    table["split"] = split if split is not None else np.where(np.arange(len(table)) % 5 == 0, "val", "train")
    return Manifest(table, ".")


def test_features_are_standardised_and_one_hot_coded_on_the_training_split():
    table = cohort(60, seed=2)
    manifest = _manifest(table)
    data = _task().prepare(manifest, RiskPreprocess(), ".", progress=None)
    plan = data.preprocess
    assert [f.name for f in plan.features] == ["age", "ef", "sex=M"]
    train = (manifest.table.split == "train").to_numpy()
    assert plan.features[0].centre == pytest.approx(table.age[train].mean())
    assert plan.features[0].scale == pytest.approx(table.age[train].std(ddof=0))
    np.testing.assert_allclose(data.inputs[:, 0], (table.age - table.age[train].mean()) / table.age[train].std(ddof=0),
                               rtol=1e-5)  # fmt: skip
    np.testing.assert_array_equal(data.inputs[:, 2], (table.sex == "M").astype(np.float32))
    assert plan.horizons == sorted(plan.horizons) and len(plan.horizons) == 3  # training event-time quartiles
    np.testing.assert_array_equal(data.targets[:, :2], table[["years", "event"]].to_numpy(np.float32))
    # the same coding reapplied to new cases, and what it refuses
    new = table.head(3).copy()
    np.testing.assert_allclose(encode_features(new, plan), data.inputs[:3])
    new.loc[0, "sex"] = "X"
    with pytest.raises(InputError, match=r"sex: value\(s\) \['X'\] of case\(s\) \['c0'\] were never seen in training"):
        encode_features(new, plan)
    with pytest.raises(ConfigError, match="the model reads column 'ef', which this table lacks"):
        encode_features(table.drop(columns="ef"), plan)


def test_missing_values_are_refused_or_imputed_with_training_statistics():
    table = cohort(60, seed=3)
    table.loc[[1, 2], "age"] = np.nan
    table.loc[3, "sex"] = ""
    manifest = _manifest(table)
    with pytest.raises(InputError, match=r"2 case\(s\) have no age \(e.g. \['c1', 'c2'\]\).*preprocess.impute: median"):
        _task().prepare(manifest, RiskPreprocess(), ".", progress=None)
    data = _task().prepare(manifest, RiskPreprocess(impute="median"), ".", progress=None)
    plan = data.preprocess
    train = (manifest.table.split == "train").to_numpy()
    median = float(np.nanmedian(table.age[train]))
    assert data.inputs[1, 0] == pytest.approx((median - plan.features[0].centre) / plan.features[0].scale)
    most_common = table.sex[train][table.sex[train] != ""].value_counts().index[0]
    assert data.inputs[3, 2] == float(most_common == "M")


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda t: t.assign(event=np.where(t.index == 4, 2, t.event)), InputError,
         r"event must be 0 \(censored\) or 1 \(event\); 1 case\(s\) have \['2'\] \(cases \['c4'\]\)"),
        (lambda t: t.assign(years=np.where(t.index == 5, -1.0, t.years)), InputError, "years must be a non-negative"),
        (lambda t: t.assign(years=t.years.astype(str).where(t.index != 6, "soon")), InputError,
         r"have \['soon'\]"),
        (lambda t: t.rename(columns={"ef": "lvef"}), ConfigError,
         r"task.features: the manifest has no column 'ef' \(did you mean 'lvef'\?\).*medsight data join"),
        (lambda t: t.assign(age=50.0), InputError, "feature 'age' is 50 for every training case"),
        (lambda t: t.assign(sex="F"), InputError, "feature 'sex' is 'F' for every training case"),
        (lambda t: t.assign(event=0), InputError, r"the train split has 0 event\(s\)"),
    ],
)  # fmt: skip
def test_bad_outcomes_and_features_are_named(change, error, match):
    with pytest.raises(error, match=match):
        _task().prepare(_manifest(change(cohort(60, seed=4))), RiskPreprocess(), ".", progress=None)


def test_recipe_mistakes_are_named():
    with pytest.raises(ConfigError, match="horizons must be positive, finite and increasing"):
        load_recipe("cardiac-risk", ["task.horizons=[5, 1]"])
    with pytest.raises(ConfigError, match=r"features are listed twice: \['age'\]"):
        load_recipe("cardiac-risk", ["task.features=[age, age]"])
    with pytest.raises(ConfigError, match=r"features include the outcome column\(s\) \['years'\]"):
        load_recipe("cardiac-risk", ["task.features=[age, years]"])
    with pytest.raises(ConfigError, match=r"unknown key 'task.hed' \(did you mean 'head'\?\)"):
        load_recipe("cardiac-risk", ["task.hed=cox"])
    with pytest.raises(ConfigError, match=r"unknown key 'preprocess.imputee' \(did you mean 'impute'\?\)"):
        load_recipe("cardiac-risk", ["preprocess.imputee=median"])


def test_a_split_without_events_or_follow_up_is_refused():
    table = cohort(60, seed=5)
    manifest = _manifest(table)
    task = _task()
    data = task.prepare(manifest, RiskPreprocess(), ".", progress=None)
    val = data.indices("val")
    data.targets[val, 1] = 0
    with pytest.raises(InputError, match="the val split has no event"):
        task.check(data, {"train": data.indices("train"), "val": val})
    data.targets[val[0], 0] = np.nan
    with pytest.raises(InputError, match=r"1 val case\(s\) have no years or event \(e.g. \['c0'\]\)"):
        task.check(data, {"val": val})


# --- through the seam ------------------------------------------------------------------------


def _recipe(tmp_path, **task):
    spec = {
        "name": "risk-test",
        "task": {"kind": "risk", "time": "years", "event": "event", "features": ["age", "ef", "sex"],
                 "horizons": [1, 3, 5], **task},
        "model": {"name": "linear"},
        "train": {"epochs": 150, "batch_size": 1024, "lr": 0.05, "schedule": "constant", "warmup_epochs": 0,
                  "precision": "fp32", "channels_last": "off", "clip_grad_norm": None,
                  "early_stopping": {"metric": "loss", "mode": "min", "patience": 30}},
        "evaluation": {"bootstrap": 100},
    }  # fmt: skip
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(spec))
    return load_recipe(tmp_path / "recipe.yaml")


@pytest.mark.slow
@pytest.mark.parametrize("head", ["cox", "discrete"])
def test_a_risk_model_learns_a_known_hazard_and_is_scored_by_patient(tmp_path, head):
    table = cohort(500, seed=6)
    table["split"] = np.array(["train", "train", "train", "val", "test"])[np.arange(len(table)) % 5]
    table.to_csv(tmp_path / "manifest.csv", index=False)
    run = tmp_path / "run"
    fit(_recipe(tmp_path, head=head), tmp_path / "manifest.csv", run)
    evaluation = evaluate_run(run, split="test", bootstrap=100)
    saved = pd.read_csv(run / "predictions_test.csv")
    test = table[table.split == "test"].reset_index(drop=True)
    assert saved.case_id.tolist() == test.case_id.tolist()
    # the figures are those of the metric functions on the saved predictions
    c = evaluation.figure("harrell c")
    assert c.estimate == pytest.approx(harrell_c(test.years, test.event, saved.risk))
    truth = harrell_c(test.years, test.event, COEF["age"] * test.age + COEF["ef"] * test.ef + 0.4 * (test.sex == "M"))
    # Cox is the true model here; the discrete head fits each interval's own weights (less efficient)
    assert c.estimate > truth - {"cox": 0.03, "discrete": 0.07}[head] and c.low < c.estimate < c.high
    assert evaluation.figure("uno c").estimate == pytest.approx(uno_c(test.years, test.event, saved.risk, tau=5.0))
    auc3 = cumulative_dynamic_auc(test.years, test.event, saved.prob_event_3, [3.0])[0][0]
    assert evaluation.figure("td auc 3").estimate == pytest.approx(auc3)
    # probabilities rise with the horizon, and match the observed share of events by then
    probabilities = saved[["prob_event_1", "prob_event_3", "prob_event_5"]].to_numpy()
    assert np.all(np.diff(probabilities, axis=1) >= -1e-9) and np.all((probabilities >= 0) & (probabilities <= 1))
    written = json.loads((run / "metrics_test.json").read_text())
    calibration = written["calibration"]["3"]
    assert len(calibration) == 4 and all(abs(q["predicted"] - q["observed"]) < 0.25 for q in calibration)
    # a table of new patients predicts as the manifest's cases did
    predictor = Predictor.from_run(run)
    test[["case_id", "age", "ef", "sex"]].to_csv(tmp_path / "new.csv", index=False)
    new = predictor.predict_files([tmp_path / "new.csv"]).table()
    np.testing.assert_allclose(new[["risk", "prob_event_3"]].to_numpy(), saved[["risk", "prob_event_3"]].to_numpy(),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    with pytest.raises(InputError, match="a risk model predicts from a table of cases"):
        predictor.predict_files([tmp_path / "recipe.yaml"])
    plan = RiskPlan.model_validate(json.loads((run / "package.json").read_text())["preprocess"])
    assert bool(plan.baseline_times) == (head == "cox") and bool(plan.edges) == (head == "discrete")


def test_fusion_reads_features_then_pixels_and_names_a_wrong_input():
    from medsight.models import build_model
    from medsight.models.fusion import FusionNet

    encoder = build_model("resnet10", in_channels=1, num_outputs=8)
    net = FusionNet(encoder, 3, (1, 16, 16), 8, 2).eval()
    features, image = torch.randn(4, 3), torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        out = net(torch.cat([features, image.flatten(1)], dim=1))
        expected = net.head(torch.cat([encoder(image), features], dim=1))
    torch.testing.assert_close(out, expected)
    with pytest.raises(InputError, match=r"fusion input must be \(B, 3 \+ 256\)"):
        net(torch.randn(4, 3 + 255))


def test_an_image_risk_model_names_its_missing_image_column_and_cells():
    table = cohort(40, seed=7)
    with pytest.raises(ConfigError, match=r"task.image: the manifest has no column 'photo'"):
        _task(image="photo").prepare(_manifest(table), RiskPreprocess(), ".", progress=None)
    plan = RiskPlan(features=[], horizons=[1.0], image={"size": 16, "channels": 1})
    task = _task(image="image")
    with pytest.raises(InputError, match="case c0: no image in column 'image'"):
        task._table_images(table.head(1).assign(image=""), plan)
    with pytest.raises(InputError, match=r"case c1: .*img1.png"):
        task._table_images(table.iloc[1:2], plan)


def test_uncertainty_of_a_model_of_features_is_sampled_by_dropout_not_augmentation():
    from medsight.inference.uncertainty import Uncertainty, sampled_models
    from medsight.models import build_model

    linear = build_model("linear", in_channels=3, num_outputs=1, tabular=True)
    with pytest.raises(ConfigError, match="a model of a table of features has none: use --uncertainty ensemble"):
        sampled_models(linear, Uncertainty("tta"), spatial_dims=0)
    with pytest.raises(ConfigError, match=r"no dropout to sample.*or use --uncertainty ensemble"):
        sampled_models(linear, Uncertainty("mc-dropout"), spatial_dims=0)
    mlp = build_model("mlp", in_channels=3, num_outputs=1, tabular=True)  # DeepSurv's dropout is sampled
    draws = sampled_models(mlp, Uncertainty("mc-dropout", samples=3), spatial_dims=0)
    x = torch.randn(5, 3)
    with torch.no_grad():
        outputs = [m(x) for m in draws]
    assert len(outputs) == 3 and not torch.allclose(outputs[0], outputs[1])
