"""Numeric mode by measurement: the candidates fit the CPU, the fastest wins, the choice is cached."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
import torch
from torch import nn

from medsight.core import ConfigError
from medsight.engine import tuning
from medsight.engine.tuning import NumericMode, choose_mode, cpu_class
from tests.engine.test_loop import _config, _loss, _model, _problem

CPU = torch.device("cpu")


def _images(n=8, size=8):
    """A batch of 2D images, the shape channels-last applies to (the model is not run by a fake timer)."""
    return torch.randn(n, 3, size, size), torch.rand(n)


def _labels(modes):
    return [m.label for m in modes]


def test_bf16_is_a_candidate_only_where_the_cpu_runs_it_natively(monkeypatch):
    monkeypatch.setattr(tuning, "native_bf16", lambda: False)
    assert _labels(tuning._candidates("auto", "auto", CPU, 4)) == ["fp32, contiguous", "fp32, channels-last"]
    monkeypatch.setattr(tuning, "native_bf16", lambda: True)
    assert _labels(tuning._candidates("auto", "auto", CPU, 4)) == [
        "fp32, contiguous", "fp32, channels-last", "bf16, contiguous", "bf16, channels-last"]  # fmt: skip
    # what the recipe fixes is taken as given; volumes (5D) are timed in both layouts on a CPU
    assert _labels(tuning._candidates("bf16", "off", CPU, 4)) == ["bf16, contiguous"]
    assert _labels(tuning._candidates("fp32", "auto", CPU, 5)) == ["fp32, contiguous", "fp32, channels-last"]
    assert _labels(tuning._candidates("fp32", "auto", CPU, 3)) == ["fp32, contiguous"]
    with pytest.raises(ConfigError, match="fp16 autocast is for CUDA"):
        tuning._candidates("fp16", "auto", CPU, 4)


def test_the_fastest_measured_mode_is_chosen_and_cached(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MEDSIGHT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(tuning, "native_bf16", lambda: True)
    speeds = {"fp32, contiguous": 10.0, "fp32, channels-last": 14.0, "bf16, contiguous": 12.0,
              "bf16, channels-last": 9.0}  # fmt: skip
    timed = []

    def fake_speeds(model, inputs, targets, loss_fn, modes):
        timed.extend(m.label for m in modes)
        return {m.label: speeds[m.label] for m in modes}

    monkeypatch.setattr(tuning, "_speeds", fake_speeds)
    batch = _images()
    with caplog.at_level(logging.INFO, logger="medsight.engine.tuning"):
        mode = choose_mode("auto", "auto", CPU, model=_model(), batch=batch, loss_fn=_loss)
    assert (mode.amp_dtype, mode.channels_last) == (None, True) and mode.images_per_second == 14.0
    assert "fp32, channels-last 14.0 img/s" in mode.reason and "fp32, channels-last" in caplog.text
    assert sorted(timed) == sorted(speeds)
    cached = json.loads((tmp_path / "cache" / "numeric-modes.json").read_text())
    assert [e["mode"] for e in cached["modes"].values()] == ["fp32, channels-last"]

    timed.clear()  # the same model and batch shape on this machine: no second measurement
    again = choose_mode("auto", "auto", CPU, model=_model(seed=3), batch=batch, loss_fn=_loss)
    assert again.label == mode.label and timed == [] and "measured on this machine before" in again.reason
    assert dict(again.speeds) == speeds and again.images_per_second == 14.0
    choose_mode("auto", "auto", CPU, model=_model(), batch=_images(size=16), loss_fn=_loss)
    assert timed  # another batch shape is measured afresh


def test_a_damaged_or_unwritable_cache_costs_a_measurement_not_the_run(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(tuning, "native_bf16", lambda: False)
    monkeypatch.setattr(tuning, "_speeds", lambda m, i, t, f, modes: {x.label: 1.0 + x.channels_last for x in modes})
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "numeric-modes.json").write_text("{not json")
    monkeypatch.setenv("MEDSIGHT_CACHE_DIR", str(cache))
    with caplog.at_level(logging.WARNING, logger="medsight.engine.tuning"):
        mode = choose_mode("auto", "auto", CPU, model=_model(), batch=_images(), loss_fn=_loss)
    assert mode.channels_last and "ignoring the numeric-mode cache" in caplog.text
    assert json.loads((cache / "numeric-modes.json").read_text())["version"] == tuning._CACHE_VERSION
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("MEDSIGHT_CACHE_DIR", str(tmp_path / "file" / "cache"))  # its parent is a file
    with caplog.at_level(logging.WARNING, logger="medsight.engine.tuning"):
        mode = choose_mode("auto", "auto", CPU, model=_model(), batch=_images(), loss_fn=_loss)
    assert mode.channels_last and "could not cache the numeric mode" in caplog.text


def test_timing_runs_real_steps_and_leaves_the_model_untouched():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(1))
    inputs, targets = torch.randn(4, 3, 16, 16), torch.rand(4)
    model(inputs)  # materialise the lazy layer
    before = {k: v.clone() for k, v in model.state_dict().items()}
    speeds = tuning._speeds(model, inputs, targets, _loss, [NumericMode(None, False), NumericMode(None, True)])
    assert set(speeds) == {"fp32, contiguous", "fp32, channels-last"} and min(speeds.values()) > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_close_modes_are_timed_again_until_one_stands_clear(monkeypatch):
    """A noisy machine: fp32's first timed steps are slow, bf16's steady; the close race is timed on,
    the clear loser is not."""
    script = {  # seconds per step: warm-up first, then the timed steps in turn
        "fp32, contiguous": [9.0, 1.8, 1.8, 1.0, 1.0, 1.0, 1.0],
        "bf16, contiguous": [9.0, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5],
        "fp32, channels-last": [9.0, 4.0, 4.0],  # 2.7x the fastest: out after the first turns
    }
    calls = dict.fromkeys(script, 0)

    def fake_trial(model, inputs, targets, loss_fn, mode):
        def step():
            calls[mode.label] += 1
            return script[mode.label][calls[mode.label] - 1]

        return step

    monkeypatch.setattr(tuning, "_trial", fake_trial)
    modes = [NumericMode(None, False), NumericMode(torch.bfloat16, False), NumericMode(None, True)]
    speeds = tuning._speeds(None, torch.zeros(6, 3, 8, 8), torch.zeros(6), _loss, modes)
    assert speeds == {"fp32, contiguous": 6.0, "bf16, contiguous": 4.0, "fp32, channels-last": 1.5}
    assert calls["fp32, channels-last"] == 1 + tuning._TIMED_STEPS
    # once fp32 is clear of bf16 by more than the margin, the timing stops
    assert calls["fp32, contiguous"] < 1 + tuning._TIMED_STEPS + tuning._MORE_STEPS
    # never more than the extra turns, even when the race stays close
    script["bf16, contiguous"] = [9.0, 1.5, 1.5, 1.2, 1.2, 1.2, 1.2]
    calls.update(dict.fromkeys(calls, 0))
    speeds = tuning._speeds(None, torch.zeros(6, 3, 8, 8), torch.zeros(6), _loss, modes)
    assert calls["fp32, contiguous"] == calls["bf16, contiguous"] == 1 + tuning._TIMED_STEPS + tuning._MORE_STEPS
    assert speeds["fp32, contiguous"] == 6.0


def test_without_a_model_auto_follows_the_rule(monkeypatch):
    monkeypatch.setattr(tuning, "native_bf16", lambda: False)
    assert choose_mode("auto", "auto", CPU).label == "fp32, channels-last"
    monkeypatch.setattr(tuning, "native_bf16", lambda: True)
    assert choose_mode("auto", "auto", CPU).label == "bf16, channels-last"
    assert choose_mode("fp32", "off", CPU).reason == "as configured"


def test_training_records_the_mode_and_validates_in_it(tmp_path):
    from medsight.engine import train

    seen = []

    def validate(model):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return {"n": 1.0}

    mode = NumericMode(torch.bfloat16, True, "test")
    train(_model(), _loss, _problem(n=32), config=_config(epochs=1), run_dir=tmp_path / "run", validate=validate,
          mode=mode)  # fmt: skip
    assert seen == [(True, torch.bfloat16)]
    environment = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert environment["numeric_mode"]["mode"] == "bf16, channels-last"
    assert environment["numeric_mode"]["cpu_class"] == cpu_class()


def test_cpu_class_follows_what_pytorch_may_use():
    assert cpu_class() in {"AMX", "AVX-512 BF16", "AVX-512", "AVX2"} or cpu_class().strip()
    if torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AVX2"):
        pytest.skip("this CPU runs no x86 AVX kernels")
    code = "from medsight.engine.tuning import cpu_class; print(cpu_class())"
    capped = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**__import__("os").environ, "ATEN_CPU_CAPABILITY": "avx2",
                                 "ONEDNN_MAX_CPU_ISA": "AVX2"})  # fmt: skip
    assert capped.stdout.strip() == "AVX2"


def test_bf16_convolutions_on_two_slices_are_guarded_into_fp32():
    """PyTorch's CPU bf16 weight gradient of a Conv3d over a 2-deep input is wrong; the guard runs
    exactly those in fp32 (the others keep bf16) and the gradients match fp32 training."""
    import copy

    from medsight.engine.tuning import guard_bf16_conv3d

    torch.manual_seed(0)
    thin = torch.nn.Conv3d(32, 32, (1, 3, 3), padding=(0, 1, 1))
    net = torch.nn.Sequential(torch.nn.Conv3d(4, 32, 3, padding=1), thin)
    shallow, deep = torch.randn(2, 4, 2, 6, 6), torch.randn(2, 4, 4, 6, 6)
    weights = torch.randn(2, 32, 2, 6, 6)
    (net(shallow) * weights).sum().backward()
    reference = net[0].weight.grad.clone()
    net.zero_grad()
    assert guard_bf16_conv3d(net) == 1 and guard_bf16_conv3d(net) == 0  # the (1, 3, 3) kernel is not affected
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(shallow)
        assert net[0](deep).dtype == torch.bfloat16  # only 2-deep inputs leave bf16
        assert torch.is_autocast_enabled("cpu")  # the guard restores autocast after each call
    (out.float() * weights).sum().backward()
    error = (net[0].weight.grad - reference).abs().max() / reference.abs().max()
    assert error < 0.02
    twin = copy.deepcopy(net)  # an EMA copy keeps the guard on its own modules
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert twin[0](shallow).dtype == torch.float32


def _unet3d():
    from monai.networks.nets import DynUNet

    torch.manual_seed(0)
    strides = [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
    return DynUNet(3, 2, 3, [[3, 3, 3]] * 3, strides, strides[1:], filters=[4, 8, 16], norm_name="instance")


def test_a_3d_network_in_channels_last_normalises_alike_and_keeps_its_parameters():
    """Instance norms become group norms of one group per channel: same outputs and gradients, the
    same parameter tensors (an optimiser made before still updates them) and state-dict keys."""
    import copy

    from medsight.engine.tuning import channels_last, instance_norms_as_group_norms

    reference = _unet3d()
    affine = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.InstanceNorm3d(4, affine=True))
    with torch.no_grad():
        affine[1].weight.uniform_(0.5, 2.0)
        affine[1].bias.uniform_(-1.0, 1.0)
    inputs = torch.randn(2, 2, 8, 8, 8)
    for net in (reference, affine):
        twin = copy.deepcopy(net)
        before = dict(twin.named_parameters())
        expected = net(inputs)
        weights = torch.randn(expected.shape)  # (a sum of squares of a norm's output has no gradient)
        (expected * weights).sum().backward()
        converted = channels_last(twin)
        assert not any(isinstance(m, nn.InstanceNorm3d) for m in converted.modules())
        assert dict(converted.named_parameters()).keys() == before.keys()
        assert all(converted.get_parameter(k) is v for k, v in before.items())
        assert converted.state_dict().keys() == net.state_dict().keys()
        out = converted(channels_last(inputs))
        (out * weights).sum().backward()
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
        for name, parameter in net.named_parameters():
            torch.testing.assert_close(converted.get_parameter(name).grad, parameter.grad, rtol=1e-3, atol=1e-4)
    assert instance_norms_as_group_norms(nn.InstanceNorm3d(4, track_running_stats=True)) == 0  # has statistics
    assert instance_norms_as_group_norms(nn.Sequential(nn.InstanceNorm3d(4, track_running_stats=True))) == 0


def test_a_3d_network_trained_in_channels_last_loads_into_the_plain_network(tmp_path):
    """What a run trained channels-last saves is what the predictor's plain network reads."""
    from medsight.engine import train

    data = torch.utils.data.TensorDataset(torch.randn(8, 2, 8, 8, 8), torch.randint(0, 3, (8, 8, 8, 8)))
    net = _unet3d()
    train(net, nn.functional.cross_entropy, data, config=_config(epochs=1, batch_size=4), run_dir=tmp_path / "run",
          mode=NumericMode(None, True, "test"))  # fmt: skip
    state = torch.load(tmp_path / "run" / "best.pt", weights_only=False)
    plain = _unet3d()
    plain.load_state_dict(state["model"])
    net.eval(), plain.eval()
    probe = torch.randn(1, 2, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(plain(probe), net(probe.contiguous(memory_format=torch.channels_last_3d)),
                                   rtol=1e-4, atol=1e-4)  # fmt: skip
