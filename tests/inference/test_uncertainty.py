"""Repeated predictions: test-time augmentation, MC dropout and ensembles through any task."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from medsight.core.errors import ConfigError, InputError
from medsight.inference import Uncertainty
from medsight.inference.uncertainty import combine, sampled_models
from medsight.models.registry import build_model


def test_combine_averages_numbers_and_keeps_the_first_tables_text():
    a = pd.DataFrame({"prob": [0.2, 0.8], "detections": ["[]", "[1]"], "count": [1, 3]})
    b = pd.DataFrame({"prob": [0.4, 0.6], "detections": ["x", "y"], "count": [3, 3]})
    out = combine([a, b])
    np.testing.assert_allclose(out["prob"], [0.3, 0.7])
    np.testing.assert_allclose(out["sd_prob"], [0.1, 0.1])
    np.testing.assert_allclose(out["sd_count"], [1.0, 0.0])
    assert out["detections"].tolist() == ["[]", "[1]"] and "sd_detections" not in out
    with pytest.raises(InputError, match="differ"):
        combine([a, b.drop(columns="count")])
    with pytest.raises(InputError, match="no predictions"):
        combine([])


def test_tta_draws_the_training_augmentation_reproducibly_and_starts_with_the_plain_network():
    torch.manual_seed(0)
    model = build_model("resnet10", spatial_dims=2, in_channels=1, num_outputs=1).eval()
    images = torch.rand(4, 1, 32, 32)
    models = sampled_models(model, Uncertainty("tta", samples=4), spatial_dims=2, augment={"flip": 1.0})
    assert len(models) == 4 and models[0] is model
    with torch.no_grad():
        outputs = [m(images) for m in models]
        again = sampled_models(model, Uncertainty("tta", samples=4), spatial_dims=2, augment={"flip": 1.0})
        torch.testing.assert_close(again[2](images), outputs[2])  # the same seed, the same draw
        assert not torch.allclose(outputs[1], outputs[0])


class _Voxelwise(nn.Module):
    """A 'network' scoring each voxel by its own value: on a mirrored input its output is the plain
    one only where the mirroring is undone on the output."""

    def forward(self, x):
        return torch.cat([2 * x + 1, x.square()], dim=1)


def _plan(**augmentation):
    from medsight.planning.plan import Augmentation3D

    class Plan:  # the fields test-time augmentation reads
        spacing, anisotropic_axis = (3.0, 1.0, 1.0), 0

    plan = Plan()
    plan.augmentation = Augmentation3D(**augmentation)
    return plan


def test_3d_tta_mirrors_only_what_it_can_undo_and_draws_reproducibly():
    volume = torch.rand(2, 1, 4, 6, 5)
    network = _Voxelwise()
    # mirroring alone (no intensity change): every prediction equals the plain one, voxel for voxel
    plan = _plan(flip_p=1.0, gamma_p=0.0, noise_p=0.0, blur_p=0.0, bias_field_p=0.0)
    models = sampled_models(network, Uncertainty("tta", samples=3), spatial_dims=3, plan=plan)
    assert len(models) == 3 and models[0] is network
    assert all(m.dims == (3, 4) for m in models[1:])  # both in-plane axes; never the thick one (axis 0)
    for model in models:
        torch.testing.assert_close(model(volume), network(volume))
    assert not torch.allclose(network(volume.flip((3, 4))), network(volume))  # (what an undone flip would give)
    # intensity changes: the predictions differ, reproducibly for a seed, and keep the input's shape
    plan = _plan(flip_p=0.5, gamma_p=1.0, noise_p=1.0)
    models = sampled_models(network, Uncertainty("tta", samples=4, seed=1), spatial_dims=3, plan=plan)
    again = sampled_models(network, Uncertainty("tta", samples=4, seed=1), spatial_dims=3, plan=plan)
    outputs = [m(volume) for m in models]
    assert all(o.shape == (2, 2, 4, 6, 5) for o in outputs) and not torch.allclose(outputs[1], outputs[0])
    torch.testing.assert_close(again[2](volume), outputs[2])
    with pytest.raises(ConfigError, match="without flips or intensity"):
        sampled_models(network, Uncertainty("tta"), spatial_dims=3,
                       plan=_plan(flip_p=0.0, gamma_p=0.0, noise_p=0.0, blur_p=0.0, bias_field_p=0.0))  # fmt: skip
    with pytest.raises(ConfigError, match="no plan"):
        sampled_models(network, Uncertainty("tta"), spatial_dims=3)


def test_mc_dropout_needs_dropout_and_leaves_the_rest_in_evaluation_mode():
    torch.manual_seed(0)
    plain = build_model("resnet10", spatial_dims=2, in_channels=1, num_outputs=1).eval()
    with pytest.raises(ConfigError, match=r"model\.dropout"):
        sampled_models(plain, Uncertainty("mc-dropout"), spatial_dims=2)
    model = build_model("resnet10", spatial_dims=2, in_channels=1, num_outputs=1, dropout=0.5).eval()
    images = torch.rand(3, 1, 32, 32)
    draws = sampled_models(model, Uncertainty("mc-dropout", samples=3), spatial_dims=2)
    with torch.no_grad():
        outputs = torch.stack([d(images) for d in draws])
        assert outputs.std(0).mean() > 0  # the draws differ
        assert not model.training and all(not m.training for m in model.modules())  # nothing left switched on
        torch.testing.assert_close(model(images), model(images))  # plain prediction stays deterministic


def test_an_ensemble_is_its_members_and_options_are_checked():
    a, b = nn.Linear(2, 1), nn.Linear(2, 1)
    assert sampled_models(a, Uncertainty("ensemble", members=(".",)), spatial_dims=2, members=[b]) == [a, b]
    with pytest.raises(ConfigError, match="--ensemble RUN2"):
        Uncertainty("ensemble")
    with pytest.raises(ConfigError, match="unknown uncertainty method 'bayes'"):
        Uncertainty("bayes")
    with pytest.raises(ConfigError, match="at least 2"):
        Uncertainty("tta", samples=1)
    with pytest.raises(ConfigError, match="with --uncertainty ensemble"):
        Uncertainty("tta", members=(".",))
