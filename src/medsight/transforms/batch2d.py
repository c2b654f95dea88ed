"""Random 2D augmentation of a whole batch at once, on the batch's device.

The same transforms as :class:`~medsight.transforms.image2d.Augment2D` describes, but every
operation runs once per batch (one ``grid_sample`` for all flips-free geometric changes, one
grouped convolution for all blurs) instead of once per image. On a CPU that takes the
augmentation out of the input pipeline's critical path (a batch of 32 at 128 px costs a few
milliseconds instead of tens); on a GPU it runs beside the network and frees the CPU.

Random parameters are drawn from torch's global CPU generator (in a fixed order, whatever
the device), so a seeded run is reproducible and ``--resume`` continues the same stream.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention

from medsight.core.errors import InputError
from medsight.transforms.image2d import Augment2D

__all__ = ["BatchAugmenter", "gaussian_blur", "warp"]

# fixed ranges, as in the per-image MONAI pipeline (build_augmentation)
BRIGHTNESS = 0.15  # intensity scaled by 1 +- this
GAMMA = (0.8, 1.25)
BLUR_SIGMA = (0.25, 1.0)  # pixels, drawn separately along y and x
NOISE_STD = 0.02  # the standard deviation is drawn from [0, this]
ELASTIC_SPACING = 32  # pixels between the control points of the elastic deformation
ELASTIC_MAGNITUDE = (1.0, 2.0)  # control points move by up to this many pixels


def warp(
    images: torch.Tensor,
    angle: torch.Tensor,
    zoom: torch.Tensor,
    displacement: torch.Tensor | None = None,
    flip: torch.Tensor | None = None,
    *,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Rotate (radians, clockwise as displayed with row 0 on top) and zoom (> 1 enlarges) each
    image about its centre, plus an optional per-pixel ``displacement`` ``(B, 2, H, W)`` in
    pixels (x, y); images whose ``flip`` is True are mirrored left-right first (same resampling).

    Bilinear interpolation (``mode="nearest"`` for label maps); outside the image is 0.
    """
    b, _, h, w = images.shape
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    zero = torch.zeros_like(cos)
    mirror = 1.0 - 2.0 * flip.float() if flip is not None else torch.ones_like(cos)
    # output pixel -> input pixel, in grid_sample's normalised coordinates (aspect-corrected)
    rows = [torch.stack([cos * mirror, sin * h / w * mirror, zero], 1), torch.stack([-sin * w / h, cos, zero], 1)]
    theta = torch.stack(rows, 1).to(images.device, images.dtype)
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
    if displacement is not None:
        scale = torch.tensor([2.0 / w, 2.0 / h], device=images.device, dtype=images.dtype)
        grid = grid + displacement.permute(0, 2, 3, 1) * scale
    return F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)


def gaussian_blur(images: torch.Tensor, sigma_y: torch.Tensor, sigma_x: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with its own sigmas (pixels) per image; borders mirrored.

    Kernels are truncated at 3 sigma of the largest sigma in the batch; each pass is a sum of
    shifted copies weighted per image (cheaper than a grouped convolution for so few taps).
    """
    radius = max(1, math.ceil(3 * float(torch.maximum(sigma_y, sigma_x).max())))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)

    def weights(sigma: torch.Tensor) -> torch.Tensor:
        k = torch.exp(-0.5 * (offsets[None] / sigma.double()[:, None]) ** 2)
        return (k / k.sum(1, keepdim=True)).to(images.device, images.dtype)[:, :, None, None, None]  # (B, K, 1, 1, 1)

    def blur(x: torch.Tensor, sigma: torch.Tensor, dim: int) -> torch.Tensor:
        size = x.shape[dim]
        padded = F.pad(x, (0, 0, radius, radius) if dim == 2 else (radius, radius, 0, 0), mode="reflect")
        k = weights(sigma)
        out = padded.narrow(dim, 0, size) * k[:, 0]
        for tap in range(1, 2 * radius + 1):
            out += padded.narrow(dim, tap, size) * k[:, tap]
        return out

    return blur(blur(images, sigma_y, 2), sigma_x, 3)


def fires(p: float, n: int) -> torch.Tensor:
    """Per sample, whether a transform of probability ``p`` fires (torch's global generator)."""
    return torch.rand(n) < p


def uniform(low: float, high: float, n: int) -> torch.Tensor:
    """``n`` values drawn uniformly in ``[low, high)`` (torch's global generator)."""
    return low + (high - low) * torch.rand(n)


def stretch_gamma(images: torch.Tensor, gammas: torch.Tensor) -> torch.Tensor:
    """Gamma per sample on each sample's own min-max range (the range is kept)."""
    dims = tuple(range(1, images.ndim))
    shape = (-1, *([1] * (images.ndim - 1)))
    low = images.amin(dim=dims, keepdim=True)
    span = images.amax(dim=dims, keepdim=True) - low
    return ((images - low) / (span + 1e-7)).clamp_(0, 1) ** gammas.view(shape) * span + low


class BatchAugmenter:
    """Augment ``(B, C, H, W)`` float images in [0, 1] as :class:`Augment2D` describes.

    Each image independently: horizontal flip; rotation and zoom in one resampling (elastic
    deformation added to it when it fires); intensity scaling; gamma (contrast); Gaussian
    blur; Gaussian noise. The result is clipped to [0, 1].
    """

    def __init__(self, spec: Augment2D) -> None:
        self.spec = spec

    def __repr__(self) -> str:
        return f"BatchAugmenter({self.spec!r})"

    def with_targets(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training loop's form: the images augmented, the (per-image) targets as they are."""
        return self(images), targets

    def with_maps(self, images: torch.Tensor, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training loop's form for targets that are maps over the image (``(B, H, W)`` or
        ``(B, K, H, W)``, e.g. lesion boxes drawn per pixel): flips, rotations, zooms and elastic
        deformation move each map with its image (nearest neighbour, outside the image 0); the
        intensity changes leave them alone."""
        if maps.shape[0] != images.shape[0] or maps.shape[-2:] != images.shape[-2:]:
            raise InputError(f"maps {tuple(maps.shape)} do not cover the images {tuple(images.shape)} one to one")
        return self._augment(images, maps)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self._augment(images, None)[0]

    def _augment(self, images: torch.Tensor, maps: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if images.ndim != 4 or not images.is_floating_point():
            raise InputError(
                f"batch augmentation takes float (B, C, H, W) images in [0, 1]; got {tuple(images.shape)} "
                f"{images.dtype}"
            )
        spec, n = self.spec, images.shape[0]
        if n == 0:
            return images, maps
        h, w = images.shape[-2:]
        # every parameter is drawn here, in this order, whether or not its transform fires (noise
        # values only for the images it hits)
        flip = fires(spec.flip, n)
        rotating, angle = fires(spec.rotate, n), uniform(-1.0, 1.0, n) * math.radians(spec.rotate_degrees)
        zooming, zoom = fires(spec.zoom, n), uniform(*spec.zoom_range, n)
        bending, magnitude = fires(spec.elastic, n), uniform(*ELASTIC_MAGNITUDE, n)
        control = torch.rand(n, 2, math.ceil(h / ELASTIC_SPACING) + 1, math.ceil(w / ELASTIC_SPACING) + 1) * 2 - 1
        scaling, factor = fires(spec.brightness_contrast, n), 1 + uniform(-BRIGHTNESS, BRIGHTNESS, n)
        contrasting, gamma = fires(spec.gamma, n), uniform(*GAMMA, n)
        blurring, sigma_y, sigma_x = (fires(spec.blur, n), uniform(*BLUR_SIGMA, n),
                                      uniform(*BLUR_SIGMA, n))  # fmt: skip
        noisy, std = fires(spec.noise, n), uniform(0.0, NOISE_STD, n)

        device = images.device

        def where(mask: torch.Tensor) -> torch.Tensor:
            return mask.nonzero().reshape(-1).to(device)

        out = images.clone()
        moved = None
        if maps is not None:
            planes = maps if maps.ndim == 4 else maps[:, None]
            moved = planes.clone()
        moving = rotating | zooming | bending
        if (flip & ~moving).any():
            index = where(flip & ~moving)
            out[index] = images[index].flip(-1)
            if moved is not None:
                moved[index] = planes[index].flip(-1)
        if moving.any():
            displacement = None
            if bending[moving].any():
                field = control[moving] * (magnitude * bending)[moving][:, None, None, None]
                displacement = F.interpolate(field.to(device, images.dtype), size=(h, w), mode="bicubic",
                                             align_corners=True)  # fmt: skip
            a, z = torch.where(rotating, angle, 0.0)[moving], torch.where(zooming, zoom, 1.0)[moving]
            index = where(moving)
            out[index] = warp(images[index], a, z, displacement, flip[moving])
            if moved is not None:
                shifted = None if displacement is None else displacement.to(torch.float32)
                moved[index] = warp(planes[index].to(torch.float32), a, z, shifted, flip[moving],
                                    mode="nearest").to(planes.dtype)  # fmt: skip
        if scaling.any():
            index = where(scaling)
            out[index] *= factor[scaling].to(device, images.dtype)[:, None, None, None]
        if contrasting.any():
            index = where(contrasting)
            out[index] = stretch_gamma(out[index], gamma[contrasting].to(device, images.dtype))
        if blurring.any():
            index = where(blurring)
            out[index] = gaussian_blur(out[index], sigma_y[blurring], sigma_x[blurring])
        if noisy.any():
            noise = torch.randn(int(noisy.sum()), *images.shape[1:]) * std[noisy][:, None, None, None]
            out[where(noisy)] += noise.to(device, images.dtype)
        if moved is not None and maps.ndim == 3:
            moved = moved[:, 0]
        return out.clamp_(0.0, 1.0), moved
