"""Every registered network builds for 1 and 3 channels in 2D (and 3D), and checkpoints load."""

from __future__ import annotations

import pytest
import torch

from medsight.core import ConfigError, InputError
from medsight.models import build_model, freeze_backbone, load_pretrained, registered_models, unfreeze

MODELS = sorted(name for name, spec in registered_models().items() if not spec.tabular)
TABULAR = sorted(name for name, spec in registered_models().items() if spec.tabular)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_every_model_builds_and_runs(name, in_channels):
    model = build_model(name, spatial_dims=2, in_channels=in_channels, num_outputs=4).eval()
    spec = registered_models()[name]
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, 64, 64))
    assert out.shape == ((2, 4, 64, 64) if spec.dense else (2, 4)) and torch.isfinite(out).all()
    keys = model.state_dict()
    assert spec.first_conv in keys and keys[spec.first_conv].shape[1] == in_channels
    assert any(k.startswith(spec.head) for k in keys)


@pytest.mark.parametrize("name", TABULAR)
def test_tabular_models_take_feature_vectors_only(name):
    model = build_model(name, in_channels=7, num_outputs=3, tabular=True).eval()
    spec = registered_models()[name]
    with torch.no_grad():
        out = model(torch.randn(5, 7))
    assert out.shape == (5, 3) and torch.isfinite(out).all()
    keys = model.state_dict()
    assert spec.first_conv in keys and keys[spec.first_conv].shape[1] == 7
    assert any(k.startswith(spec.head) for k in keys)
    with pytest.raises(ConfigError, match="takes a feature vector per case, but this task gives it images"):
        build_model(name, in_channels=1)
    with pytest.raises(ConfigError, match="takes images, but this task gives it feature vectors; use one of: linear"):
        build_model("resnet18", in_channels=7, tabular=True)


@pytest.mark.parametrize("name", ["resnet18", "densenet121"])
def test_3d_models(name):
    model = build_model(name, spatial_dims=3, in_channels=4, num_outputs=2).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 4, 32, 32, 32)).shape == (1, 2)


def test_resnet_uses_the_usual_stride_two_stem():
    model = build_model("resnet18", in_channels=1)
    assert model.conv1.stride == (2, 2)


def test_unknown_model_and_bad_sizes():
    with pytest.raises(ConfigError, match="Did you mean 'resnet18'"):
        build_model("resnet-18")
    with pytest.raises(ConfigError, match="spatial_dims"):
        build_model("resnet18", spatial_dims=4)


def _spec(name):
    return registered_models()[name]


def test_full_checkpoint_with_ddp_prefix_loads_and_adapts_three_to_one_channel(tmp_path):
    source = build_model("resnet18", in_channels=3, num_outputs=10)
    checkpoint = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}
    torch.save(checkpoint, tmp_path / "ckpt.pt")
    target = build_model("resnet18", in_channels=1, num_outputs=2)
    report = load_pretrained(target, tmp_path / "ckpt.pt", _spec("resnet18"))
    assert report.adapted == ["conv1.weight"]
    torch.testing.assert_close(target.conv1.weight, source.conv1.weight.mean(dim=1, keepdim=True))
    torch.testing.assert_close(target.layer2[0].conv1.weight, source.layer2[0].conv1.weight)
    assert sorted(report.mismatched) == ["fc.bias", "fc.weight"]  # 10 classes vs 2: head kept fresh
    assert report.unexpected == [] and "loaded" in report.summary()


def test_torchvision_densenet_names_are_remapped(tmp_path):
    source = build_model("densenet121", in_channels=3, num_outputs=14)
    renamed = {}
    for key, value in source.state_dict().items():  # write it the way torchvision names it
        key = key.replace(".layers.", ".").replace("class_layers.out.", "classifier.")
        renamed[key] = value
    torch.save(renamed, tmp_path / "tv.pth")
    target = build_model("densenet121", in_channels=3, num_outputs=14)
    report = load_pretrained(target, tmp_path / "tv.pth", _spec("densenet121"))
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value)


def test_bad_checkpoints(tmp_path):
    model = build_model("resnet18", in_channels=3)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a loadable PyTorch checkpoint"):
        load_pretrained(model, tmp_path / "junk.pt", _spec("resnet18"))
    torch.save(build_model("densenet121").state_dict(), tmp_path / "other.pt")
    with pytest.raises(InputError, match="another architecture"):
        load_pretrained(model, tmp_path / "other.pt", _spec("resnet18"))
    with pytest.raises(InputError, match="no such checkpoint"):
        load_pretrained(model, tmp_path / "missing.pt", _spec("resnet18"))


def test_freeze_then_unfreeze():
    model = build_model("efficientnet-b0", in_channels=3, num_outputs=3)
    frozen = freeze_backbone(model, _spec("efficientnet-b0"))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert frozen > 0 and trainable and all(n.startswith("_fc.") for n in trainable)
    unfreeze(model)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "efficientnet-b0"])
@pytest.mark.parametrize("dims", [2, 3])
def test_global_pooling_choices_replace_the_networks_own(name, dims):
    from medsight.models.registry import GlobalPool

    torch.manual_seed(0)
    x = torch.randn(2, 1, *([32] * dims))
    reference = build_model(name, spatial_dims=dims, in_channels=1, num_outputs=3).eval()
    same = build_model(name, spatial_dims=dims, in_channels=1, num_outputs=3, pooling="avg").eval()
    same.load_state_dict(reference.state_dict())
    torch.testing.assert_close(same(x), reference(x))  # avg is the network's own pooling
    for kind in ("max", "lse"):
        model = build_model(name, spatial_dims=dims, in_channels=1, num_outputs=3, pooling=kind).eval()
        model.load_state_dict(reference.state_dict())  # no new parameters
        assert sum(isinstance(m, GlobalPool) for m in model.modules()) == 1
        assert model(x).shape == (2, 3)


def test_global_pool_formulas():
    from medsight.models.registry import GlobalPool

    x = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(GlobalPool("avg")(x), x.mean((2, 3), keepdim=True))
    torch.testing.assert_close(GlobalPool("max")(x), x.amax((2, 3), keepdim=True))
    r = 10.0
    lse = torch.log(torch.exp(r * x).mean((2, 3), keepdim=True)) / r  # the formula written out
    torch.testing.assert_close(GlobalPool("lse", r)(x), lse)
    assert (GlobalPool("avg")(x) <= GlobalPool("lse")(x) + 1e-6).all()
    assert (GlobalPool("lse")(x) <= GlobalPool("max")(x) + 1e-6).all()
    with pytest.raises(ConfigError, match="pooling must be"):
        build_model("resnet18", pooling="median")


def test_a_3d_run_trained_in_bf16_predicts_and_settles_in_bf16(tmp_path, monkeypatch):
    """The prediction mode of a run (bf16 only for a 3D model trained in bf16, on a CPU that runs it
    natively) is also the mode in which what training fits on the model's outputs is fitted."""
    import json
    from dataclasses import dataclass

    import medsight.models.predict as predict
    from medsight.engine.fit import _settled
    from medsight.models.predict import Autocast, trained_dtype

    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.setattr(predict, "native_bf16", lambda: True)
    assert trained_dtype(3, run) is None  # no record of the training's mode: fp32
    (run / "environment.json").write_text("{not json")
    assert trained_dtype(3, run) is None
    (run / "environment.json").write_text(json.dumps({"numeric_mode": {"mode": "fp32, channels-last"}}))
    assert trained_dtype(3, run) is None
    (run / "environment.json").write_text(json.dumps({"numeric_mode": {"mode": "bf16, channels-last"}}))
    assert trained_dtype(3, run) == torch.bfloat16 and trained_dtype(2, run) is None  # 2D models predict in fp32
    monkeypatch.setattr(predict, "native_bf16", lambda: False)
    assert trained_dtype(3, run) is None  # emulated bf16 would be ten times slower

    class Probe(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv3d(1, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    class Settling:
        spatial_dims = 3

        def settle(self, model, data, indices, *, progress=None):
            out = model(torch.ones(1, 1, 2, 2, 2))
            seen.append((isinstance(model, Autocast), self.conv_dtype(model), out.dtype))
            return "settled"

        @staticmethod
        def conv_dtype(model):
            captured = []
            handle = model.get_submodule("model.conv" if isinstance(model, Autocast) else "conv").register_forward_hook(
                lambda m, i, o: captured.append(o.dtype)
            )
            model(torch.ones(1, 1, 2, 2, 2))
            handle.remove()
            return captured[0]

    @dataclass
    class Data:
        preprocess: object

    seen: list = []
    model = Probe()
    torch.save({"model": model.state_dict()}, run / "best.pt")
    data = Data(preprocess=None)
    assert _settled(Settling(), model, data, None, run / "best.pt", None) == Data(preprocess="settled")
    monkeypatch.setattr(predict, "native_bf16", lambda: True)
    _settled(Settling(), model, data, None, run / "best.pt", None)
    assert seen == [(False, torch.float32, torch.float32), (True, torch.bfloat16, torch.float32)]
