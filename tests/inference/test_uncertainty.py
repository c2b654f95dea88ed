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
    with pytest.raises(ConfigError, match="2D models"):
        sampled_models(model, Uncertainty("tta"), spatial_dims=3, augment={})


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
