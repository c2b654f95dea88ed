"""Checks of an attribution map: is it faithful to the network, does it depend on what the network
learned, and does it point at the lesion where the truth is known.

- Deletion and insertion curves (Petsiuk et al. 2018, RISE): the image's pixels are replaced by a
  blurred copy in the map's order, most important first (deletion), or the blurred image gets its
  pixels back in that order (insertion), and the target's probability is followed. A faithful map
  makes the probability fall fast on deletion (small area under the curve) and rise fast on
  insertion (large area). The same curves in a random pixel order are the reference.
- The model randomisation test (Adebayo et al. 2018): the rank correlation between a map and the
  map of the same input under a network with re-drawn weights. High correlation means the
  method shows the image (edges), not what the network learned.
- Energy in the box and the pointing game (Wang et al. 2020; Zhang et al. 2018): the share of a
  map's positive mass inside the true lesion boxes, against the share of the image the boxes
  cover (what a map spread evenly would get), and whether the map's peak lies in a box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage, stats

from medsight.core.errors import InputError

__all__ = ["BoxEnergy", "Curves", "box_energy", "deletion_insertion", "mask_energy", "rank_correlation"]

_STEPS = 20  # points along each curve after the start


@dataclass(frozen=True)
class Curves:
    """Deletion and insertion curves of one map (probabilities at fractions 0, 1/steps, ..., 1 of
    the pixels moved) and their areas, in the map's order and in a random order."""

    fractions: list[float]
    deletion: list[float]
    insertion: list[float]
    deletion_random: list[float]
    insertion_random: list[float]

    @staticmethod
    def _area(curve: list[float], fractions: list[float]) -> float:
        y, x = np.asarray(curve, np.float64), np.asarray(fractions, np.float64)
        return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)))  # the trapezoid rule

    @property
    def deletion_auc(self) -> float:
        """Area under the deletion curve (lower: more faithful)."""
        return self._area(self.deletion, self.fractions)

    @property
    def insertion_auc(self) -> float:
        """Area under the insertion curve (higher: more faithful)."""
        return self._area(self.insertion, self.fractions)

    @property
    def deletion_auc_random(self) -> float:
        return self._area(self.deletion_random, self.fractions)

    @property
    def insertion_auc_random(self) -> float:
        return self._area(self.insertion_random, self.fractions)

    def summary(self) -> dict[str, float]:
        """The four areas, and ``faithfulness``: (insertion - deletion) in the map's order minus
        the same in a random order (> 0: the map ranks pixels better than chance)."""
        return {
            "deletion_auc": round(self.deletion_auc, 4),
            "insertion_auc": round(self.insertion_auc, 4),
            "deletion_auc_random": round(self.deletion_auc_random, 4),
            "insertion_auc_random": round(self.insertion_auc_random, 4),
            "faithfulness": round(
                (self.insertion_auc - self.deletion_auc) - (self.insertion_auc_random - self.deletion_auc_random), 4
            ),
        }


def _blurred(image: torch.Tensor) -> torch.Tensor:
    """The image with its detail removed: a Gaussian blur of sigma an eighth of its size per axis."""
    array = image.numpy()
    sigma = [0.0, *(max(1.0, s / 8) for s in array.shape[1:])]
    return torch.from_numpy(ndimage.gaussian_filter(array, sigma=sigma, mode="nearest").astype(np.float32))


def _curve(
    probability: torch.nn.Module | object,
    start: torch.Tensor,
    end: torch.Tensor,
    order: np.ndarray,
    steps: int,
    batch: int,
) -> list[float]:
    """Probabilities of the images going from ``start`` to ``end``, pixels (all channels) moved in
    ``order``, at ``steps + 1`` evenly spaced fractions."""
    flat_start, flat_end = start.reshape(start.shape[0], -1), end.reshape(end.shape[0], -1)
    n = flat_start.shape[1]
    counts = np.linspace(0, n, steps + 1).round().astype(int)
    out: list[float] = []
    for first in range(0, len(counts), batch):
        images = []
        for count in counts[first : first + batch]:
            image = flat_start.clone()
            moved = torch.from_numpy(order[:count])
            image[:, moved] = flat_end[:, moved]
            images.append(image.reshape(start.shape))
        out += [float(p) for p in probability(torch.stack(images))]  # type: ignore[operator]
    return out


def deletion_insertion(
    probability: object, image: torch.Tensor, attribution: np.ndarray, *, steps: int = _STEPS, seed: int = 0
) -> Curves:
    """Deletion and insertion curves of one ``(C, *spatial)`` image and its ``(*spatial)`` map.

    ``probability``: a callable taking ``(B, C, *spatial)`` images to the target's ``(B,)``
    probabilities. Ties in the map (e.g. a flat Grad-CAM region) are broken at random (``seed``).

    Raises:
        InputError: the map is not on the image's grid, or is not finite.
    """
    if tuple(attribution.shape) != tuple(image.shape[1:]):
        raise InputError(f"an attribution map of shape {attribution.shape} does not fit an image of "
                         f"{tuple(image.shape)}")  # fmt: skip
    if not np.all(np.isfinite(attribution)):
        raise InputError("the attribution map holds NaN or infinite values")
    rng = np.random.default_rng(seed)
    flat = attribution.reshape(-1).astype(np.float64)
    tie_break = rng.random(flat.size)
    order = np.lexsort((tie_break, -flat))  # most important first
    shuffled = rng.permutation(flat.size)
    image = image.float()
    blurred = _blurred(image)
    batch = 8
    return Curves(
        fractions=[float(f) for f in np.linspace(0, 1, steps + 1)],
        deletion=_curve(probability, image, blurred, order, steps, batch),
        insertion=_curve(probability, blurred, image, order, steps, batch),
        deletion_random=_curve(probability, image, blurred, shuffled, steps, batch),
        insertion_random=_curve(probability, blurred, image, shuffled, steps, batch),
    )


def rank_correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman's rank correlation of two maps of one grid (NaN when either is constant)."""
    if first.shape != second.shape:
        raise InputError(f"maps of shapes {first.shape} and {second.shape} cannot be compared")
    a, b = first.reshape(-1).astype(np.float64), second.reshape(-1).astype(np.float64)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


@dataclass(frozen=True)
class BoxEnergy:
    """How a map sits on the true boxes of its target.

    Attributes:
        energy: The share of the map's positive mass inside the boxes (NaN: no positive mass).
        chance: The share of the image the boxes cover (what an evenly spread map gets).
        hit: Whether the map's maximum lies inside a box (the pointing game).
    """

    energy: float
    chance: float
    hit: bool


def box_energy(attribution: np.ndarray, boxes: np.ndarray) -> BoxEnergy:
    """Energy in the boxes and the pointing game for a 2D ``(H, W)`` map and ``(n, 4)`` boxes
    ``x0, y0, x1, y1`` in the map's pixels (corners at pixel edges; clipped to the map).

    Raises:
        InputError: not a 2D map, no box, or a box with x1 < x0 or y1 < y0.
    """
    if attribution.ndim != 2:
        raise InputError(f"energy in a box needs a 2D map, got shape {attribution.shape}")
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        raise InputError("energy in a box needs at least one box")
    if np.any(boxes[:, 2] < boxes[:, 0]) or np.any(boxes[:, 3] < boxes[:, 1]):
        raise InputError(f"boxes must have x1 >= x0 and y1 >= y0, got {boxes.tolist()}")
    h, w = attribution.shape
    inside = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in boxes:
        c0, c1 = int(np.clip(np.floor(x0), 0, w)), int(np.clip(np.ceil(x1), 0, w))
        r0, r1 = int(np.clip(np.floor(y0), 0, h)), int(np.clip(np.ceil(y1), 0, h))
        inside[r0:r1, c0:c1] = True
    return mask_energy(attribution, inside)


def mask_energy(attribution: np.ndarray, mask: np.ndarray, region: np.ndarray | None = None) -> BoxEnergy:
    """:func:`box_energy` for a true mask of any shape (a 3D lesion's voxels): the map's positive mass in
    the mask, the share of ``region`` (where the map could be; default everywhere) the mask covers, and
    whether the map's maximum lies in the mask.

    Raises:
        InputError: the map, the mask and the region differ in shape.
    """
    mask = np.asarray(mask, bool)
    region = np.ones(mask.shape, bool) if region is None else np.asarray(region, bool)
    if attribution.shape != mask.shape or region.shape != mask.shape:
        raise InputError(f"map {attribution.shape}, mask {mask.shape} and region {region.shape} must be one shape")
    positive = np.where(region, np.clip(attribution.astype(np.float64), 0, None), 0.0)
    total = positive.sum()
    energy = float(positive[mask].sum() / total) if total > 0 else float("nan")
    peak = np.unravel_index(int(np.argmax(np.where(region, attribution, -np.inf))), attribution.shape)
    chance = float(mask[region].mean()) if region.any() else float("nan")
    return BoxEnergy(energy=energy, chance=chance, hit=bool(mask[peak]))
