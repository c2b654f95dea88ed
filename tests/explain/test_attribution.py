"""Attribution maps through the task seam: where known networks must point, and checks against
independent references (class activation maps for Grad-CAM, completeness for integrated gradients)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from medsight.core.errors import ConfigError, InputError
from medsight.explain import METHODS, ExplainedNetwork, attribute, box_energy, feature_layer, randomised
from medsight.models.cam import class_activation_maps
from medsight.models.cellmap import ResNetCells
from medsight.models.registry import build_model
from medsight.tasks import task_for


class BrightSpot(nn.Module):
    """Logit = the strongest local brightness above 0.5: a network whose evidence is known."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.fill_(1 / 9)
            self.conv.bias.fill_(-0.5)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(2, 1)
        with torch.no_grad():
            self.fc.weight.fill_(4.0)
            self.fc.bias.fill_(-1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1))


def _spots(n: int = 3, size: int = 48, seed: int = 0) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Dim noisy images, each with one bright square; its box ``x0, y0, x1, y1``."""
    rng = np.random.default_rng(seed)
    images, boxes = [], []
    for _ in range(n):
        image = rng.uniform(0.1, 0.3, size=(1, size, size)).astype(np.float32)
        x, y = rng.integers(4, size - 12, size=2)
        image[0, y : y + 8, x : x + 8] = 0.9
        images.append(image)
        boxes.append(np.array([[x, y, x + 8, y + 8]], float))
    return torch.from_numpy(np.stack(images)), boxes


BINARY = task_for({"kind": "binary", "classes": ["normal", "lesion"]})


@pytest.mark.parametrize("method", METHODS)
def test_every_method_points_at_the_evidence_of_a_known_network(method):
    network = ExplainedNetwork(BrightSpot(), BINARY)
    images, boxes = _spots()
    maps = attribute(network, images, 0, method)
    assert maps.shape == (3, 48, 48) and maps.dtype == np.float32 and np.all(np.isfinite(maps))
    for found, box in zip(maps, boxes, strict=True):
        energy = box_energy(found, box)
        assert energy.hit, method
        assert energy.energy > 0.5 > 0.1 > energy.chance, (method, energy)


def test_grad_cam_of_a_pooled_linear_head_is_its_class_activation_map():
    """Grad-CAM at the last feature map of global-average-pooled ResNet = the head's CAM (Zhou et
    al.) / (h w), rectified and upsampled: checked against our own CAM code."""
    torch.manual_seed(0)
    model = build_model("resnet10", spatial_dims=2, in_channels=1, num_outputs=3).eval()
    task = task_for({"kind": "multilabel", "classes": ["a", "b", "c"]})
    network = ExplainedNetwork(model, task)
    images = torch.rand(2, 1, 64, 64)
    assert feature_layer(network, images) == "model.layer4"
    _, cams = class_activation_maps(model, images)
    for k in range(3):
        expected = F.interpolate(F.relu(cams[:, k : k + 1]) / cams[0, 0].numel(), size=(64, 64), mode="bilinear",
                                 align_corners=False)[:, 0].numpy()  # fmt: skip
        np.testing.assert_allclose(attribute(network, images, k, "gradcam"), expected, rtol=1e-4, atol=1e-6)


def test_integrated_gradients_add_up_to_the_change_of_the_logit():
    """Completeness (Sundararajan et al. 2017): the attributions sum to f(x) - f(black)."""
    torch.manual_seed(0)
    model = build_model("resnet10", spatial_dims=2, in_channels=1, num_outputs=1).eval()
    network = ExplainedNetwork(model, BINARY)
    image = torch.rand(1, 1, 48, 48)
    total = attribute(network, image, 0, "ig")[0].sum()
    with torch.no_grad():
        change = float(network(image)[0, 0] - network(torch.zeros_like(image))[0, 0])
    assert total == pytest.approx(change, rel=0.05, abs=0.02)


def test_occlusion_is_the_drop_of_the_logit_when_a_patch_is_covered():
    network = ExplainedNetwork(BrightSpot(), BINARY)
    images, _ = _spots(1)
    maps = attribute(network, images, 0, "occlusion", window=6)
    with torch.no_grad():
        logit = float(network(images)[0, 0])
        covered = images.clone()
        covered[0, :, 0:6, 0:6] = float(images[0].mean())
        drop = logit - float(network(covered)[0, 0])
    assert maps[0, 0, 0] == pytest.approx(drop, abs=1e-5)  # the corner pixel is under one window only


def test_the_detectors_layer_is_before_its_head_and_its_score_is_the_best_cell():
    torch.manual_seed(0)
    task = task_for({"kind": "detection2d", "findings": ["mass", "effusion"]})
    model = ResNetCells("resnet10", 1, outputs=2).eval()
    network = ExplainedNetwork(model, task)
    images = torch.rand(2, 1, 64, 64)
    assert feature_layer(network, images) == "model.fc.head.1"
    assert network.targets == ("mass", "effusion")
    with torch.no_grad():
        expected = task.scores(model(images))[["prob_mass", "prob_effusion"]].to_numpy()
    np.testing.assert_allclose(network.probabilities(images).numpy(), expected, rtol=1e-6)
    assert attribute(network, images, 1, "gradcampp").shape == (2, 64, 64)


def test_explaining_leaves_the_callers_network_as_it_was():
    torch.manual_seed(0)
    model = build_model("resnet10", spatial_dims=2, in_channels=1, num_outputs=1).eval()
    network = ExplainedNetwork(model, BINARY)
    images = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        before = network(images).clone()
    inplace = [m.inplace for m in model.modules() if hasattr(m, "inplace")]
    for method in METHODS:
        attribute(network, images, 0, method)
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert [m.inplace for m in model.modules() if hasattr(m, "inplace")] == inplace
    with torch.no_grad():
        torch.testing.assert_close(network(images), before)


def test_randomised_weights_are_new_reproducible_and_leave_the_original_alone():
    network = ExplainedNetwork(BrightSpot(), BINARY)
    kept = {k: v.clone() for k, v in network.state_dict().items()}
    first, second, other = randomised(network, seed=1), randomised(network, seed=1), randomised(network, seed=2)
    for key, value in network.state_dict().items():
        torch.testing.assert_close(value, kept[key])
        torch.testing.assert_close(first.state_dict()[key], second.state_dict()[key])
    assert not torch.equal(first.state_dict()["model.conv.weight"], kept["model.conv.weight"])
    assert not torch.equal(first.state_dict()["model.conv.weight"], other.state_dict()["model.conv.weight"])


def test_bad_requests_are_named():
    network = ExplainedNetwork(BrightSpot(), BINARY)
    images, _ = _spots(1)
    with pytest.raises(ConfigError, match="gradcam, gradcampp, occlusion, ig"):
        attribute(network, images, 0, "lime")
    with pytest.raises(ConfigError, match="this model explains: lesion"):
        network.target_index("tumour")
    assert network.target_index("LESION") == 0
    with pytest.raises(ConfigError, match="this model explains"):
        attribute(network, images, 3, "gradcam")
    with pytest.raises(InputError, match=r"2D images \(B, C, \*spatial\)"):
        attribute(network, images[0], 0, "gradcam")
    with pytest.raises(ConfigError, match=r"no layer 'model\.nope'"):
        attribute(network, images, 0, "gradcam", layer="model.nope")
    with pytest.raises(ConfigError, match="occlusion window"):
        attribute(network, images, 0, "occlusion", window=500)


class _Recording(BrightSpot):
    """BrightSpot noting whether each forward pass of a batch ran under bf16 autocast."""

    def __init__(self) -> None:
        super().__init__()
        self.passes: list[tuple[int, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        self.passes.append((len(x), autocast))
        return super().forward(x)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_the_curves_run_in_the_dtype_asked_and_the_map_as_the_predictor_does(dtype):
    """``curves_dtype`` (bf16 for a 3D model that predicts in it) moves only the deletion and insertion
    curves' passes; the map and the image's probability keep fp32, and the curves stay the same curves."""
    from types import SimpleNamespace

    from medsight.explain.explainer import explain

    model = _Recording().eval()
    images, boxes = _spots(n=1)
    package = SimpleNamespace(recipe="spots", model=SimpleNamespace(name="brightspot"))
    predictor = SimpleNamespace(model=model, task=BINARY, run_dir="run", package=package)
    result = explain(predictor, [images[0].numpy()], ["spot"], boxes=[{0: boxes[0]}], sanity=False,
                     curves_dtype=dtype)  # fmt: skip
    curves = [autocast for size, autocast in model.passes if size > 1]  # the curves' passes are batched
    assert curves and all(autocast == (dtype is not None) for autocast in curves)
    assert not any(autocast for size, autocast in model.passes if size == 1)  # probability and map: fp32
    reference = explain(predictor, [images[0].numpy()], ["spot"], boxes=[{0: boxes[0]}], sanity=False)
    ours, theirs = result.images[0].checks["gradcam"], reference.images[0].checks["gradcam"]
    assert ours["deletion_auc"] == pytest.approx(theirs["deletion_auc"], abs=0.02)
    assert ours["insertion_auc"] == pytest.approx(theirs["insertion_auc"], abs=0.02)
