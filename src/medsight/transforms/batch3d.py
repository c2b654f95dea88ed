"""Random augmentation of whole 3D batches on the training device (image and label together).

Spatial changes — rotation, scaling, elastic deformation (one resampling of the batch) and flips —
move image and label together (labels by nearest neighbour); intensity changes — blur, bias
field, brightness, gamma, noise — touch the image only. Each is drawn per sample, with its own
probability, from torch's seeded generator (runs repeat; ``--resume`` continues the stream).
Rotations and scaling act in millimetres (``spacing``), so a patch of anisotropic voxels is not
sheared; with a thick-slice axis, rotation (about that axis) and scaling are in-plane only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention

from medsight.transforms.batch2d import fires, stretch_gamma, uniform

__all__ = ["BatchAugmenter3D"]

_ELASTIC_GRID = 4  # control points per axis of the elastic displacement field


class BatchAugmenter3D:
    """``augment(images (N, C, Z, Y, X), labels (N, Z, Y, X)) -> (images, labels)``.

    Args:
        spacing: Voxel size ``(z, y, x)`` mm of the patches (for rotations in millimetres).
        thick_axis: The thick-slice axis (0 = z), if any: rotation is about it only and it never flips.
        rotation_p, rotation_degrees: Probability of a rotation, and its range about each axis.
        scale_p, scale_range: Probability of a zoom, and the factor's range (> 1 zooms in).
        elastic_p, elastic_mm: Probability of an elastic deformation, and its displacement (mm).
        flip_p: Probability of a flip along each allowed axis.
        blur_p, blur_sigma: Probability of a Gaussian blur, and its sigma range (voxels).
        bias_field_p, bias_strength: Probability of a smooth multiplicative field ``exp(+-strength)``.
        brightness_p, brightness: Probability of multiplying a sample by a factor in ``brightness``.
        gamma_p, gamma: Probability of a gamma change (on the sample's min-max range).
        noise_p, noise_std: Probability of Gaussian noise of standard deviation up to ``noise_std``.
    """

    def __init__(
        self,
        *,
        spacing: Sequence[float] = (1.0, 1.0, 1.0),
        thick_axis: int | None = None,
        rotation_p: float = 0.2,
        rotation_degrees: float = 30.0,
        scale_p: float = 0.2,
        scale_range: tuple[float, float] = (0.7, 1.4),
        elastic_p: float = 0.0,
        elastic_mm: float = 4.0,
        flip_p: float = 0.5,
        blur_p: float = 0.2,
        blur_sigma: tuple[float, float] = (0.5, 1.0),
        bias_field_p: float = 0.1,
        bias_strength: float = 0.3,
        brightness_p: float = 0.15,
        brightness: tuple[float, float] = (0.75, 1.25),
        gamma_p: float = 0.3,
        gamma: tuple[float, float] = (0.7, 1.5),
        noise_p: float = 0.1,
        noise_std: float = 0.1,
    ) -> None:
        self.spacing, self.thick_axis = tuple(float(s) for s in spacing), thick_axis
        self.rotation_p, self.rotation_degrees = rotation_p, rotation_degrees
        self.scale_p, self.scale_range = scale_p, scale_range
        self.elastic_p, self.elastic_mm = elastic_p, elastic_mm
        self.flip_p = flip_p
        self.flip_axes = tuple(a for a in range(3) if a != thick_axis)
        self.blur_p, self.blur_sigma = blur_p, blur_sigma
        self.bias_field_p, self.bias_strength = bias_field_p, bias_strength
        self.brightness_p, self.brightness = brightness_p, brightness
        self.gamma_p, self.gamma = gamma_p, gamma
        self.noise_p, self.noise_std = noise_p, noise_std

    def _matrices(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample, a rotation-and-zoom matrix in (x, y, z) millimetre space, and whether it is
        not the identity."""
        rotate, zoom = fires(self.rotation_p, n), fires(self.scale_p, n)
        limit = math.radians(self.rotation_degrees)
        angles = uniform(-limit, limit, n * 3).view(n, 3) * rotate[:, None]
        if self.thick_axis is not None:  # in-plane only: about the thick axis (z -> x,y,z index 2 - axis)
            keep = torch.zeros(3)
            keep[2 - self.thick_axis] = 1.0
            angles = angles * keep
        factors = torch.where(zoom, uniform(*self.scale_range, n), torch.ones(n))
        matrices = torch.empty(n, 3, 3)
        for i in range(n):
            ax, ay, az = angles[i].tolist()
            rx = torch.tensor([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
            ry = torch.tensor([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
            rz = torch.tensor([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
            scaling = torch.full((3,), 1 / float(factors[i]))  # sampling a smaller region zooms in
            if self.thick_axis is not None:
                scaling[2 - self.thick_axis] = 1.0  # in-plane only: thick slices are not resampled
            matrices[i] = (rz @ ry @ rx) @ torch.diag(scaling)
        return matrices, rotate | zoom

    def _spatial(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, device = images.shape[0], images.device
        matrices, moved = self._matrices(n)
        elastic = fires(self.elastic_p, n)
        chosen = moved | elastic
        if not chosen.any():
            return images, labels
        index = torch.nonzero(chosen).reshape(-1)
        size = images.shape[2:]
        # normalised grid coordinates span each axis' extent: express the rotation in millimetres
        half = torch.tensor([size[2] * self.spacing[2], size[1] * self.spacing[1], size[0] * self.spacing[0]]) / 2
        theta = torch.zeros(len(index), 3, 4)
        theta[:, :, :3] = torch.diag(1 / half) @ matrices[index] @ torch.diag(half)
        grid = F.affine_grid(theta.to(device), [len(index), 1, *size], align_corners=False)
        if elastic[index].any():
            coarse = torch.randn(len(index), 3, _ELASTIC_GRID, _ELASTIC_GRID, _ELASTIC_GRID)
            coarse = coarse * elastic[index].view(-1, 1, 1, 1, 1) * (self.elastic_mm / half).view(1, 3, 1, 1, 1)
            field = F.interpolate(coarse.to(device), size=tuple(size), mode="trilinear", align_corners=True)
            grid = grid + field.permute(0, 2, 3, 4, 1)
        images, labels = images.clone(), labels.clone()
        images[index] = F.grid_sample(images[index], grid, mode="bilinear", padding_mode="zeros",
                                      align_corners=False)  # fmt: skip
        moved_labels = F.grid_sample(labels[index][:, None].float(), grid, mode="nearest", padding_mode="zeros",
                                     align_corners=False)  # fmt: skip
        labels[index] = moved_labels[:, 0].round().to(labels.dtype)
        return images, labels

    def _blur(self, images: torch.Tensor) -> torch.Tensor:
        chosen = fires(self.blur_p, images.shape[0])
        for i in torch.nonzero(chosen).reshape(-1).tolist():
            sigma = float(uniform(*self.blur_sigma, 1))
            radius = max(1, math.ceil(2 * sigma))
            offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
            kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
            kernel = kernel / kernel.sum()
            sample = images[i : i + 1]
            channels = sample.shape[1]
            for axis in range(3):
                if axis == self.thick_axis:
                    continue
                shape = [1, 1, 1]
                shape[axis] = len(kernel)
                weight = kernel.view(1, 1, *shape).repeat(channels, 1, 1, 1, 1)
                padding = [0, 0, 0]
                padding[axis] = radius
                sample = F.conv3d(sample, weight, padding=tuple(padding), groups=channels)
            images[i : i + 1] = sample
        return images

    def intensity(self, images: torch.Tensor) -> torch.Tensor:
        """Only the intensity changes (blur, bias field, brightness, gamma, noise) of ``images``
        ``(N, C, Z, Y, X)``, on a copy: what test-time augmentation draws, no label map needed."""
        return self._intensity(images.clone())

    def _intensity(self, images: torch.Tensor) -> torch.Tensor:
        """The intensity changes, in place on ``images`` (the caller's own copy)."""
        n = images.shape[0]
        images = self._blur(images)
        chosen = fires(self.bias_field_p, n).to(images.device)
        if chosen.any():
            coarse = uniform(-self.bias_strength, self.bias_strength, int(chosen.sum()) * 27).view(-1, 1, 3, 3, 3)
            field = F.interpolate(coarse.to(images.device), size=tuple(images.shape[2:]), mode="trilinear",
                                  align_corners=True)  # fmt: skip
            images[chosen] = images[chosen] * torch.exp(field)
        chosen = fires(self.brightness_p, n).to(images.device)
        if chosen.any():
            factors = uniform(*self.brightness, int(chosen.sum())).to(images.device)
            images[chosen] = images[chosen] * factors.view(-1, 1, 1, 1, 1)
        chosen = fires(self.gamma_p, n).to(images.device)
        if chosen.any():
            gammas = uniform(*self.gamma, int(chosen.sum())).to(images.device)
            images[chosen] = stretch_gamma(images[chosen], gammas)
        chosen = fires(self.noise_p, n).to(images.device)
        if chosen.any():
            stds = self.noise_std * torch.rand(int(chosen.sum())).to(images.device).view(-1, 1, 1, 1, 1)
            images[chosen] = images[chosen] + stds * torch.randn_like(images[chosen])
        return images

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = images.shape[0]
        images, labels = self._spatial(images, labels)
        images, labels = images.clone(), labels.clone()
        for axis in self.flip_axes:
            chosen = fires(self.flip_p, n).to(images.device)
            if chosen.any():
                images[chosen] = images[chosen].flip(axis + 2)
                labels[chosen] = labels[chosen].flip(axis + 1)
        return self._intensity(images), labels
