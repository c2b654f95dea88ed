"""Attribution maps of any task's network: where in the input it saw what it reports.

Every task says, through the seam, which scores an explanation can be asked about
(:meth:`~medsight.tasks.base.Task.explain_targets`) and how its network's outputs become those
scores as logits (:meth:`~medsight.tasks.base.Task.explain_logits`): a classifier's class logits,
a 2D detector's most probable cell per finding. :class:`ExplainedNetwork` wraps the network so
that it looks like a classifier over those targets, and the established implementations run on
it unchanged: MONAI's Grad-CAM and Grad-CAM++ (2D and 3D), Captum's occlusion and integrated
gradients.

Maps are ``(B, *spatial)`` float arrays on the network's input grid; larger values mean more
evidence for the target. Grad-CAM maps are non-negative; occlusion and integrated gradients are
signed (negative: evidence against).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from typing import Literal, get_args

import numpy as np
import torch
from torch import nn

from medsight.core.errors import ConfigError, InputError
from medsight.tasks import Task

__all__ = ["METHODS", "ExplainedNetwork", "Method", "attribute", "feature_layer", "randomised"]

log = logging.getLogger(__name__)

Method = Literal["gradcam", "gradcampp", "occlusion", "ig"]
METHODS: tuple[str, ...] = get_args(Method)
"""Attribution methods by name: Grad-CAM, Grad-CAM++, occlusion sensitivity, integrated gradients."""

_IG_STEPS = 32  # Riemann steps of integrated gradients (Sundararajan et al. use 20-300)


class ExplainedNetwork(nn.Module):
    """A task's network seen as a classifier over the task's explanation targets.

    ``forward`` returns ``(B, K)`` float logits, one per :meth:`Task.explain_targets`.
    """

    def __init__(self, model: nn.Module, task: Task) -> None:
        super().__init__()
        self.model, self.task = model, task
        self.targets = task.explain_targets()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.task.explain_logits(self.model(inputs)).float()

    def probabilities(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` probabilities of the targets (no gradients)."""
        with torch.no_grad():
            return self.task.explain_probabilities(self(inputs))

    def target_index(self, target: str | int) -> int:
        """The index of a target given by name (case-insensitive) or index.

        Raises:
            ConfigError: no such target (the known ones named).
        """
        if isinstance(target, int) and not isinstance(target, bool):
            if 0 <= target < len(self.targets):
                return target
        else:
            wanted = str(target).strip().lower()
            for k, name in enumerate(self.targets):
                if name.lower() == wanted:
                    return k
        raise ConfigError(f"unknown explanation target {target!r}; this model explains: {', '.join(self.targets)}")


def feature_layer(network: ExplainedNetwork, example: torch.Tensor) -> str:
    """The name (in ``network``) of the last layer whose output is a spatial feature map: the
    layer Grad-CAM reads. Feature maps shaped like the network's own output (a dense head's
    logits) and maps pooled to one pixel do not count.

    Raises:
        ConfigError: the network has no such layer.
    """
    seen: list[tuple[str, tuple[int, ...]]] = []

    def keep(name: str) -> Callable[[nn.Module, object, object], None]:
        def hook(_: nn.Module, __: object, output: object) -> None:
            if isinstance(output, torch.Tensor) and output.ndim == example.ndim:
                seen.append((name, tuple(output.shape)))

        return hook

    hooks = [m.register_forward_hook(keep(n)) for n, m in network.model.named_modules() if n]
    try:
        with torch.no_grad():
            raw = network.model(example[:1])
    finally:
        for hook in hooks:
            hook.remove()
    final = tuple(raw.shape) if isinstance(raw, torch.Tensor) else ()
    usable = [n for n, shape in seen if math.prod(shape[2:]) > 1 and shape != final]
    if not usable:
        raise ConfigError(f"{type(network.model).__name__} has no spatial feature map for Grad-CAM; "
                          "use --method occlusion or ig")  # fmt: skip
    return f"model.{usable[-1]}"


def _check(network: ExplainedNetwork, images: torch.Tensor, target: int) -> None:
    if images.ndim != 2 + network.task.spatial_dims:
        raise InputError(f"{network.task.spatial_dims}D images (B, C, *spatial) expected, got shape "
                         f"{tuple(images.shape)}")  # fmt: skip
    network.target_index(target)


def attribute(
    network: ExplainedNetwork,
    images: torch.Tensor,
    target: int,
    method: str,
    *,
    layer: str | None = None,
    window: int | None = None,
) -> np.ndarray:
    """``(B, *spatial)`` attribution maps of target ``target`` for ``images`` ``(B, C, *spatial)``.

    Args:
        method: ``gradcam`` / ``gradcampp`` (MONAI; at ``layer``, by default :func:`feature_layer`),
            ``occlusion`` (Captum; a ``window``-pixel patch, by default an eighth of the image along
            each axis (a quarter in 3D), slid by half its size, filled with the image's mean), or
            ``ig`` (Captum's integrated gradients from a black image, summed over channels).

    Raises:
        ConfigError: an unknown method or layer.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown explanation method {method!r}; choose from {', '.join(METHODS)}")
    _check(network, images, target)
    network = network.eval()
    images = images.float()
    if method in ("gradcam", "gradcampp"):
        return _cam(network, images, target, method, layer)
    if method == "occlusion":
        return _occlusion(network, images, target, window)
    return _integrated_gradients(network, images, target)


def _cam(network: ExplainedNetwork, images: torch.Tensor, target: int, method: str, layer: str | None) -> np.ndarray:
    from monai.visualize import GradCAM, GradCAMpp

    # MONAI's hooks stay on the modules they wrap (and it turns in-place activations off): a copy keeps
    # the caller's network as it was
    network = copy.deepcopy(network)
    name = layer if layer is not None else feature_layer(network, images)
    if name not in dict(network.named_modules()):
        raise ConfigError(f"no layer {name!r} in {type(network.model).__name__}; layers are named like "
                          f"{feature_layer(network, images)!r}")  # fmt: skip
    maker = GradCAM if method == "gradcam" else GradCAMpp
    cam = maker(nn_module=network, target_layers=name, postprocessing=lambda x: x)
    maps = []
    for image in images:  # one by one: MONAI squeezes the batch axis of the class score
        with torch.enable_grad():
            maps.append(cam(image[None].clone().requires_grad_(True), class_idx=target)[0, 0].detach())
    return torch.stack(maps).numpy().astype(np.float32)


def _occlusion(network: ExplainedNetwork, images: torch.Tensor, target: int, window: int | None) -> np.ndarray:
    from captum.attr import Occlusion

    spatial = tuple(images.shape[2:])
    if window is not None and not 1 <= window <= min(spatial):
        raise ConfigError(f"the occlusion window must be 1..{min(spatial)} pixels, got {window}")
    # by default 15 positions per axis in 2D, 7 in 3D (a 3D window of 7^3 forward passes, not 15^3)
    shape = tuple(window or max(1, s // (8 if len(spatial) == 2 else 4)) for s in spatial)
    strides = tuple(max(1, w // 2) for w in shape)
    occlusion = Occlusion(network)
    maps = []
    for image in images:
        fill = float(image.mean())
        with torch.no_grad():
            found = occlusion.attribute(image[None], target=target, baselines=fill,
                                        sliding_window_shapes=(image.shape[0], *shape),
                                        strides=(image.shape[0], *strides), perturbations_per_eval=8)  # fmt: skip
        maps.append(found[0].sum(0))
    return torch.stack(maps).numpy().astype(np.float32)


def _integrated_gradients(network: ExplainedNetwork, images: torch.Tensor, target: int) -> np.ndarray:
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(network)
    maps = []
    for image in images:
        with torch.enable_grad():
            found = ig.attribute(image[None], baselines=torch.zeros_like(image[None]), target=target,
                                 n_steps=_IG_STEPS, internal_batch_size=8)  # fmt: skip
        maps.append(found[0].detach().sum(0))
    return torch.stack(maps).numpy().astype(np.float32)


def randomised(network: ExplainedNetwork, *, seed: int = 0) -> ExplainedNetwork:
    """A copy of ``network`` with every learned weight drawn again as at initialisation (the model
    randomisation test of Adebayo et al. 2018: an explanation that survives it does not depend on
    what the network learned)."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        copied = copy.deepcopy(network)
        for module in copied.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset) and module is not copied:
                reset()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                module.reset_running_stats()
    finally:
        torch.random.set_rng_state(generator_state)
    return copied.eval()
