"""The training loop on a tiny problem: files written, exact resume, early stopping, EMA, precision."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from medsight.core import ConfigError, InputError
from medsight.engine import EarlyStopping, TrainConfig, train
from medsight.engine.loop import _loader


def _problem(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).float()
    return TensorDataset(x, y)


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))


def _loss(logits, y):
    return nn.functional.binary_cross_entropy_with_logits(logits.reshape(-1), y)


def _config(**kw):
    base = dict(epochs=4, batch_size=16, lr=0.05, precision="fp32", warmup_epochs=0.5)
    return TrainConfig(**{**base, **kw})


def _val(data):
    x, y = data.tensors

    def validate(model):
        logits = model(x).reshape(-1)
        return {"loss": float(_loss(logits, y)), "accuracy": float(((logits > 0).float() == y).float().mean())}

    return validate


def test_run_folder_holds_config_environment_metrics_and_checkpoints(tmp_path):
    data = _problem()
    result = train(_model(), _loss, data, config=_config(), run_dir=tmp_path / "run", validate=_val(data),
                   extra_config={"recipe": "toy"})  # fmt: skip
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {"config.json", "environment.json", "metrics.jsonl", "last.pt", "best.pt"}
    config = json.loads((run / "config.json").read_text())
    assert config["epochs"] == 4 and config["recipe"] == "toy"
    env = json.loads((run / "environment.json").read_text())
    assert env["versions"]["torch"] and env["seed"] == 0
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4]
    assert lines[-1]["train_loss"] < lines[0]["train_loss"] and lines[-1]["val_accuracy"] > 0.85
    assert 0 <= lines[0]["data_wait_share"] <= 1 and lines[0]["images_per_second"] > 0
    assert result.epochs_run == 4 and not result.stopped_early


class _CrashError(Exception):
    pass


def test_resume_continues_exactly(tmp_path):
    data = _problem()
    reference_model = _model()
    train(reference_model, _loss, data, config=_config(), run_dir=tmp_path / "full")

    interrupted = _model()

    def crash(stage, done, total):
        if stage.startswith("training | epoch 3/") and done == 2:
            raise _CrashError

    with pytest.raises(_CrashError):
        train(interrupted, _loss, data, config=_config(), run_dir=tmp_path / "cut", progress=crash)
    resumed = _model(seed=99)  # fresh weights: everything must come from last.pt
    train(resumed, _loss, data, config=_config(), run_dir=tmp_path / "cut", resume=True)
    for a, b in zip(reference_model.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_the_optimiser_is_fused_and_steps_as_the_plain_one(tmp_path, optimizer):
    """The loop trains with fused kernels (one pass over all parameters); they make the same update as
    PyTorch's per-tensor loop, and a checkpoint of either resumes in the other."""
    data = _problem()
    config = _config(optimizer=optimizer, epochs=2)
    train(_model(), _loss, data, config=config, run_dir=tmp_path / "run")
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["optimizer"]
    assert all(group["fused"] for group in state["param_groups"])
    cls = torch.optim.AdamW if optimizer == "adamw" else torch.optim.SGD
    options = {"lr": 0.05, "weight_decay": 0.01} | ({"momentum": 0.9, "nesterov": True} if optimizer == "sgd" else {})
    x, y = data.tensors
    models = [_model(), _model()]
    optimizers = [cls(models[0].parameters(), fused=True, **options), cls(models[1].parameters(), foreach=False,
                                                                          **options)]  # fmt: skip
    for step in range(6):
        if step == 3:  # swap the states: each resumes from the other's checkpoint
            saved = [o.state_dict() for o in optimizers]
            optimizers[0].load_state_dict(saved[1])
            optimizers[1].load_state_dict(saved[0])
        for model, opt in zip(models, optimizers, strict=True):
            opt.zero_grad()
            _loss(model(x[step * 16 : step * 16 + 16]), y[step * 16 : step * 16 + 16]).backward()
            opt.step()
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_run_folder_rules(tmp_path):
    data = _problem()
    train(_model(), _loss, data, config=_config(epochs=1), run_dir=tmp_path / "run")
    with pytest.raises(InputError, match=r"not empty.*--resume"):
        train(_model(), _loss, data, config=_config(epochs=1), run_dir=tmp_path / "run")
    # --resume where nothing was checkpointed yet starts the run (a new folder included)
    assert train(_model(), _loss, data, config=_config(epochs=1), run_dir=tmp_path / "new", resume=True).epochs_run == 1


def test_early_stopping_and_best_checkpoint(tmp_path):
    data = _problem()
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.69, 0.1, 0.1, 0.1])
    result = train(
        _model(), _loss, data,
        config=_config(epochs=8, early_stopping=EarlyStopping(metric="auc", mode="max", patience=3)),
        run_dir=tmp_path / "run", validate=lambda m: {"auc": next(scores)},
    )  # fmt: skip
    assert result.stopped_early and result.epochs_run == 5 and result.best_epoch == 2 and result.best_metric == 0.7
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert best["epoch"] == 2 and best["metric"] == 0.7


def test_validation_every_nth_epoch_and_the_last(tmp_path):
    """Without early stopping the best checkpoint is the last epoch, validated or not; only every
    n-th epoch and the last are scored."""
    data = _problem()
    scored = []

    def validate(model):
        scored.append(len(scored))
        return {"auc": 0.5}

    result = train(_model(), _loss, data, config=_config(epochs=7, validate_every=3), run_dir=tmp_path / "run",
                   validate=validate)  # fmt: skip
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(1, 8)) and len(scored) == 3
    assert [r["epoch"] for r in lines if "val_auc" in r] == [3, 6, 7]
    assert _config(epochs=7, validate_every=3).validations == len(scored)  # what the demo's time model counts
    assert result.best_epoch == 7 and torch.load(tmp_path / "run" / "best.pt", weights_only=True)["epoch"] == 7

    def drawing(model):  # a validation that draws random numbers leaves training's draws as they were
        return {"auc": float(torch.rand(1)) + float(np.random.rand())}

    models = [_model(), _model()]
    for model, every in zip(models, (1, 3), strict=True):
        train(model, _loss, data, config=_config(epochs=7, validate_every=every), run_dir=tmp_path / f"every{every}",
              validate=drawing, augment_batch=lambda x, y: (x + 0.1 * torch.randn_like(x), y))  # fmt: skip
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_early_stopping_counts_validations_when_some_epochs_are_not_scored(tmp_path):
    data = _problem()
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.9])  # epochs 2, 4, 6, 8 (and 10, never reached)
    result = train(
        _model(), _loss, data,
        config=_config(epochs=10, validate_every=2,
                       early_stopping=EarlyStopping(metric="auc", mode="max", patience=2)),
        run_dir=tmp_path / "run", validate=lambda m: {"auc": next(scores)},
    )  # fmt: skip
    assert result.stopped_early and result.epochs_run == 8 and result.best_epoch == 4 and result.best_metric == 0.7
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["epoch"] == 4
    with pytest.raises(ValueError, match="validate_every"):
        _config(validate_every=0)


def test_ema_weights_are_kept_and_scored(tmp_path):
    data = _problem()
    model = _model()
    seen = []
    train(model, _loss, data, config=_config(epochs=2, ema_decay=0.9), run_dir=tmp_path / "run",
          validate=lambda m: seen.append(m) or {"loss": 0.0})  # fmt: skip
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert best["ema"] is not None
    ema_weight = best["ema"]["0.weight"]
    assert not torch.allclose(ema_weight, model.state_dict()["0.weight"])
    assert seen[0] is not model  # validation scored the averaged model
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert set(last["ema"]) == set(model.state_dict())  # the averaged weights, loadable into the model
    train(_model(), _loss, data, config=_config(epochs=3, ema_decay=0.9), run_dir=tmp_path / "run", resume=True)
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 3


def test_bf16_and_channels_last_follow_the_fp32_loss_curve(tmp_path):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (64,), generator=g).float()
    x = torch.rand(64, 3, 16, 16, generator=g)
    x[:, 0] += y[:, None, None] * 0.5  # learnable in a few epochs
    curves = {}
    for precision, layout in (("fp32", "off"), ("bf16", "on")):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1))
        config = _config(epochs=4, precision=precision, channels_last=layout, lr=0.05)
        result = train(model, _loss, TensorDataset(x, y), config=config, run_dir=tmp_path / precision)
        assert result.epochs_run == 4
        lines = (tmp_path / precision / "metrics.jsonl").read_text().splitlines()
        curves[precision] = np.array([json.loads(line)["train_loss"] for line in lines])
    # the same data, seed and steps: bf16 rounding moves the curve a little (another seed moves it
    # by 5-40 %), never its course; and it does move it, so autocast was in effect
    np.testing.assert_allclose(curves["bf16"], curves["fp32"], rtol=0.02)
    assert not np.array_equal(curves["bf16"], curves["fp32"])
    assert curves["fp32"][-1] < 0.75 * curves["fp32"][0]


def test_class_balanced_sampling_evens_out_batches():
    y = torch.tensor([0.0] * 90 + [1.0] * 10)
    data = TensorDataset(torch.zeros(100, 1), y)
    weights = np.where(y.numpy() == 1, 1 / 10, 1 / 90)
    labels = torch.cat([b[1] for b in _loader(data, _config(batch_size=50), weights, epoch_seed=1)])
    assert 0.35 < labels.mean().item() < 0.65


def test_undefined_validation_metric_still_leaves_a_best_checkpoint_and_says_so(tmp_path, caplog):
    stopping = EarlyStopping(metric="auc", mode="max", patience=5)
    result = train(_model(), _loss, _problem(), config=_config(epochs=2, early_stopping=stopping),
                   run_dir=tmp_path / "run", validate=lambda m: {"auc": float("nan")})  # fmt: skip
    assert (tmp_path / "run" / "best.pt").is_file() and result.best_epoch == 1
    assert "epoch 2: val_auc is undefined (NaN)" in caplog.text


def test_early_stopping_on_a_figure_validation_does_not_produce_is_refused(tmp_path):
    stopping = EarlyStopping(metric="acuracy", mode="max", patience=2)  # a typo
    config = _config(epochs=3, early_stopping=stopping)
    data = _problem()
    # told the names: refused before anything is written
    with pytest.raises(ConfigError, match=r"'acuracy' is not a validation figure.*'accuracy'.*accuracy, loss"):
        train(_model(), _loss, data, config=config, run_dir=tmp_path / "a", validate=_val(data),
              metric_names=["accuracy"])  # fmt: skip
    assert not (tmp_path / "a").exists()
    # not told: refused at the first validation (it used to stop on NaN after `patience` epochs)
    with pytest.raises(ConfigError, match=r"Did you mean 'accuracy'\? Available: accuracy, loss"):
        train(_model(), _loss, data, config=config, run_dir=tmp_path / "b", validate=_val(data))
    with pytest.raises(ConfigError, match="has no validation"):
        train(_model(), _loss, data, config=config, run_dir=tmp_path / "c")


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_scratch(tmp_path, caplog):
    data = _problem()

    def crash(stage, done, total):
        if stage.startswith("training | epoch 1/") and done == 2:
            raise _CrashError

    with pytest.raises(_CrashError):
        train(_model(), _loss, data, config=_config(epochs=2), run_dir=tmp_path / "run", progress=crash)
    assert not (tmp_path / "run" / "last.pt").exists() and (tmp_path / "run" / "config.json").is_file()
    result = train(_model(), _loss, data, config=_config(epochs=2), run_dir=tmp_path / "run", resume=True)
    assert result.epochs_run == 2 and "no checkpoint yet" in caplog.text
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="holds no medsight run"):
        train(_model(), _loss, data, config=_config(epochs=2), run_dir=tmp_path / "other", resume=True)


def test_resume_refuses_a_changed_recipe_and_records_more_epochs(tmp_path):
    data = _problem()
    run = tmp_path / "run"
    train(_model(), _loss, data, config=_config(epochs=2), run_dir=run, extra_config={"recipe": {"size": 128}})
    with pytest.raises(ConfigError, match=r"different recipe \(recipe.size: 128 -> 256\)"):
        train(_model(), _loss, data, config=_config(epochs=3), run_dir=run, resume=True,
              extra_config={"recipe": {"size": 256}})  # fmt: skip
    with pytest.raises(ConfigError, match=r"different recipe \(lr: 0.05 -> 0.1\)"):
        train(_model(), _loss, data, config=_config(epochs=3, lr=0.1), run_dir=run, resume=True,
              extra_config={"recipe": {"size": 128}})  # fmt: skip
    with pytest.raises(ConfigError, match=r"can only grow.*set to 2, got 1"):
        train(_model(), _loss, data, config=_config(epochs=1), run_dir=run, resume=True,
              extra_config={"recipe": {"size": 128}})  # fmt: skip
    result = train(_model(), _loss, data, config=_config(epochs=3), run_dir=run, resume=True,
                   extra_config={"recipe": {"size": 128}})  # fmt: skip
    assert result.epochs_run == 3
    config = json.loads((run / "config.json").read_text())
    assert config["epochs"] == 3 and config["resumed"] == [{"changed": {"epochs": [2, 3]}}]


def test_bad_options(tmp_path):
    with pytest.raises(ConfigError, match="fp16 autocast is for CUDA"):
        train(_model(), _loss, _problem(), config=_config(precision="fp16"), run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(Exception, match="extra"):
        TrainConfig(epoch=3)


def test_weighted_shards_together_are_one_balanced_draw():
    from medsight.engine.loop import WeightedShardSampler

    weights = np.array([1.0] * 90 + [9.0] * 10)  # class 1 is rare: 10 items carrying half the weight
    shards = [list(WeightedShardSampler(weights, rank, 3, seed=7)) for rank in range(3)]
    assert [len(s) for s in shards] == [34, 34, 34]  # ceil(100 / 3) each, as DistributedSampler pads
    generator = torch.Generator().manual_seed(7)
    single = torch.multinomial(torch.as_tensor(weights), 102, replacement=True, generator=generator)
    interleaved = [shards[i % 3][i // 3] for i in range(102)]
    assert interleaved == single.tolist()
    rare = sum(i >= 90 for s in shards for i in s) / 102
    assert 0.35 < rare < 0.65
    assert list(WeightedShardSampler(weights, 1, 3, seed=8)) != shards[1]  # a new epoch seed draws anew


def test_tensorboard_gets_every_epoch_figure(tmp_path):
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator", reason="pip install tensorboard (in the dev extra)"
    )
    train(_model(), _loss, _problem(), config=_config(epochs=3, tensorboard=True), run_dir=tmp_path / "run",
          validate=_val(_problem(n=32, seed=1)))  # fmt: skip
    events = accumulator.EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"train_loss", "val_loss", "val_accuracy", "lr"} <= set(events.Tags()["scalars"])
    for name in ("train_loss", "val_accuracy"):
        points = events.Scalars(name)
        assert [p.step for p in points] == [1, 2, 3]
        np.testing.assert_allclose([p.value for p in points], [r[name] for r in logged], rtol=1e-6)


def test_batch_augmentation_runs_on_every_training_batch_only(tmp_path):
    seen = []

    def augment(x, y):
        seen.append(x.shape[0])
        return x, y

    data = _problem(n=40)
    scored = []
    config = _config(epochs=2, batch_size=16)
    train(_model(), _loss, data, config=config, run_dir=tmp_path / "run", augment_batch=augment,
          validate=lambda m: scored.append(1) or {"x": 0.0})  # fmt: skip
    assert seen == [16, 16, 8] * 2 and len(scored) == 2
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["augment_share"] < 1 for r in records)


def test_frozen_parameters_wait_for_their_epochs(tmp_path):
    model = _model()
    first = list(model[0].parameters())
    snapshots = []

    def validate(m):
        snapshots.append([p.detach().clone() for p in m.parameters()])
        return {"x": 0.0}

    start = [p.detach().clone() for p in model.parameters()]
    config = _config(epochs=3, weight_decay=0.1)
    train(model, _loss, _problem(), config=config, run_dir=tmp_path / "run", validate=validate, frozen=first,
          freeze_epochs=2)  # fmt: skip
    for epoch in (0, 1):  # the first layer (weights and bias) untouched, even by weight decay; the rest trains
        assert all(torch.equal(a, b) for a, b in zip(snapshots[epoch][:2], start[:2], strict=True))
        assert not torch.equal(snapshots[epoch][2], start[2])
    assert not torch.equal(snapshots[2][0], start[0])  # unfrozen in epoch 3


def test_progress_names_one_stage_and_shows_the_last_validation_figure(tmp_path):
    stages = []
    train(_model(), _loss, _problem(n=32), config=_config(epochs=2), run_dir=tmp_path / "run",
          validate=_val(_problem(n=16, seed=1)), progress=lambda stage, done, total: stages.append(stage))  # fmt: skip
    assert all(s.startswith("training | epoch ") for s in stages)
    assert "val" not in stages[0] and "val accuracy" in stages[-1] and stages[-1].endswith("(epoch 1)")


class _Payload:
    """Unpickling this would build an arbitrary object (the way a hostile file runs code)."""


def test_a_checkpoint_holding_objects_is_refused_not_unpickled(tmp_path):
    data = _problem()
    train(_model(), _loss, data, config=_config(epochs=1), run_dir=tmp_path / "run")
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    torch.save({**state, "extra": _Payload()}, tmp_path / "run" / "last.pt")
    with pytest.raises(InputError, match=r"not a loadable PyTorch checkpoint \(it holds a pickled \S+_Payload object"):
        train(_model(), _loss, data, config=_config(epochs=2), run_dir=tmp_path / "run", resume=True)


def test_steps_with_a_non_finite_loss_are_skipped_and_counted(tmp_path):
    data = _problem()
    calls = {"n": 0}

    def sometimes_nan(logits, y):
        calls["n"] += 1
        loss = _loss(logits, y)
        return loss * float("nan") if calls["n"] % 4 == 0 else loss

    train(_model(), sometimes_nan, data, config=_config(epochs=2), run_dir=tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r.get("skipped_steps", 0) >= 1 for r in records)
    assert all(np.isfinite(r["train_loss"]) for r in records)  # the mean of the finite losses
    weights = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_a_diverged_run_stops_with_what_to_do(tmp_path):
    from medsight.core.errors import TrainingError

    data = _problem()
    with pytest.raises(TrainingError, match=r"not finite for 5 steps in a row \(epoch 1, step 5\); no epoch finished"):
        train(_model(), lambda logits, y: _loss(logits, y) * float("inf"), data, config=_config(epochs=2),
              run_dir=tmp_path / "run")  # fmt: skip
    assert not (tmp_path / "run" / "last.pt").exists()
