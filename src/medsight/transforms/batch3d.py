"""Random augmentation of whole 3D batches on the training device (image and label together).

Flips along each axis, a multiplicative brightness change, a gamma change and Gaussian noise,
each drawn per sample from torch's seeded generator. Geometric changes (flips) move image and
label together; intensity changes touch the image only.
"""

from __future__ import annotations

import torch

__all__ = ["BatchAugmenter3D"]


class BatchAugmenter3D:
    """``augment(images (N, C, Z, Y, X), labels (N, Z, Y, X)) -> (images, labels)``.

    Args:
        flip_p: Probability of a flip along each axis (per sample).
        flip_axes: Spatial axes (0 = z) that may flip; leave out one whose direction carries meaning.
        brightness_p: Probability of multiplying a sample by a factor in ``brightness``.
        gamma_p: Probability of a gamma change in ``gamma`` (on the sample's min-max range).
        noise_p: Probability of Gaussian noise of standard deviation up to ``noise_std``.
    """

    moves_targets = True  # the training loop passes the label maps too

    def __init__(
        self,
        *,
        flip_p: float = 0.5,
        flip_axes: tuple[int, ...] = (0, 1, 2),
        brightness_p: float = 0.15,
        brightness: tuple[float, float] = (0.75, 1.25),
        gamma_p: float = 0.3,
        gamma: tuple[float, float] = (0.7, 1.5),
        noise_p: float = 0.1,
        noise_std: float = 0.1,
    ) -> None:
        self.flip_p, self.flip_axes = flip_p, flip_axes
        self.brightness_p, self.brightness = brightness_p, brightness
        self.gamma_p, self.gamma = gamma_p, gamma
        self.noise_p, self.noise_std = noise_p, noise_std

    def _draw(self, n: int, p: float, device: torch.device) -> torch.Tensor:
        return torch.rand(n).to(device) < p

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, device = images.shape[0], images.device
        images, labels = images.clone(), labels.clone()
        for axis in self.flip_axes:
            chosen = self._draw(n, self.flip_p, device)
            if chosen.any():
                images[chosen] = images[chosen].flip(axis + 2)
                labels[chosen] = labels[chosen].flip(axis + 1)
        chosen = self._draw(n, self.brightness_p, device)
        if chosen.any():
            low, high = self.brightness
            factors = low + (high - low) * torch.rand(int(chosen.sum())).to(device)
            images[chosen] = images[chosen] * factors.view(-1, 1, 1, 1, 1)
        chosen = self._draw(n, self.gamma_p, device)
        if chosen.any():
            low, high = self.gamma
            part = images[chosen]
            lows = part.amin(dim=(1, 2, 3, 4), keepdim=True)
            spans = (part.amax(dim=(1, 2, 3, 4), keepdim=True) - lows).clamp_min(1e-8)
            gammas = (low + (high - low) * torch.rand(int(chosen.sum())).to(device)).view(-1, 1, 1, 1, 1)
            images[chosen] = ((part - lows) / spans).pow(gammas) * spans + lows
        chosen = self._draw(n, self.noise_p, device)
        if chosen.any():
            stds = self.noise_std * torch.rand(int(chosen.sum())).to(device).view(-1, 1, 1, 1, 1)
            images[chosen] = images[chosen] + stds * torch.randn_like(images[chosen])
        return images, labels
