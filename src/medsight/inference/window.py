"""Gaussian-weighted sliding windows over a volume, in NumPy: what the torch-free runtime predicts
3D volumes with (the PyTorch side uses MONAI's ``sliding_window_inference``; the two agree to float
rounding, tested).

Windows of the patch size are laid ``int(patch * (1 - overlap))`` apart along each axis, the last
one flush with the far edge; a volume smaller than a patch is padded with zeros, centred, and the
padding cut off again. Each window's outputs are weighted by a Gaussian (sigma one eighth of the
patch, floored at 1e-3 of its peak) and the sums divided by the summed weights, as MONAI does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from medsight.core.errors import InputError
from medsight.core.progress import Progress

__all__ = ["gaussian_weights", "sliding_window", "window_starts"]

Network = Callable[[np.ndarray], np.ndarray]
"""A batch of patches ``(N, C, *patch)`` float32 -> their outputs ``(N, K, *patch)``."""


def gaussian_weights(patch_size: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """The weight of each voxel of a window: a Gaussian centred on the patch, sigma ``sigma_scale``
    of its size per axis, floored at 1e-3 (or its least value if larger)."""
    weights = np.ones((), np.float32)
    for n in patch_size:
        x = np.arange(n, dtype=np.float32) - (n - 1) / 2.0
        weights = np.multiply.outer(weights, np.exp(x**2 / (-2.0 * (n * sigma_scale) ** 2)).astype(np.float32))
    return np.maximum(weights, max(float(weights.min()), 1e-3)).astype(np.float32)


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Where the windows along one axis of ``size`` voxels start (``size >= patch``)."""
    step = patch if patch == size else max(int(patch * (1 - overlap)), 1)
    count = next((d for d in range(math.ceil(size / step)) if d * step + patch >= size), 0) + 1
    return [min(d * step, size - patch) for d in range(count)]


def sliding_window(
    network: Network,
    image: np.ndarray,
    patch_size: Sequence[int],
    *,
    batch_size: int = 2,
    overlap: float = 0.5,
    mirror: bool = False,
    progress: Progress | None = None,
) -> np.ndarray:
    """The network's outputs over a whole preprocessed volume ``(C, Z, Y, X)``, ``(K, Z, Y, X)``
    float32: windows of ``patch_size``, ``batch_size`` at a time, blended by Gaussian weights;
    averaged over the 8 mirrorings when ``mirror``.

    Raises:
        InputError: the image is not ``(C, Z, Y, X)``, or the patch has another number of axes.
    """
    image = np.asarray(image, np.float32)
    patch = tuple(int(n) for n in patch_size)
    if image.ndim != 4 or len(patch) != 3:
        raise InputError(f"sliding windows run over (C, Z, Y, X) volumes with 3D patches; got an image of shape "
                         f"{image.shape} and a patch of {patch}")  # fmt: skip
    if not 0 <= overlap < 1:
        raise InputError(f"overlap must be >= 0 and < 1, got {overlap}")
    flips: list[tuple[int, ...]] = [()]
    if mirror:
        flips = [tuple(a for a in (1, 2, 3) if mask >> (a - 1) & 1) for mask in range(8)]
    total: np.ndarray | None = None
    for number, axes in enumerate(flips, start=1):
        flipped = np.flip(image, axes) if axes else image
        out = _windows(network, flipped, patch, batch_size, overlap)
        out = np.flip(out, axes) if axes else out
        total = out.copy() if total is None else total + out
        if progress is not None and len(flips) > 1:
            progress("mirrored passes", number, len(flips))
    assert total is not None
    return total / len(flips) if len(flips) > 1 else total


def _windows(network: Network, image: np.ndarray, patch: tuple[int, ...], batch_size: int,
             overlap: float) -> np.ndarray:  # fmt: skip
    shape = image.shape[1:]
    pads = [(max(p - n, 0) // 2, max(p - n, 0) - max(p - n, 0) // 2) for n, p in zip(shape, patch, strict=True)]
    if any(a or b for a, b in pads):
        image = np.pad(image, [(0, 0), *pads])
    size = image.shape[1:]
    starts = [window_starts(n, p, overlap) for n, p in zip(size, patch, strict=True)]
    corners = [(z, y, x) for z in starts[0] for y in starts[1] for x in starts[2]]
    weights = gaussian_weights(patch)
    total: np.ndarray | None = None
    counts = np.zeros(size, np.float32)
    for first in range(0, len(corners), max(batch_size, 1)):
        chunk = corners[first : first + max(batch_size, 1)]
        boxes = [tuple(slice(c, c + p) for c, p in zip(corner, patch, strict=True)) for corner in chunk]
        outputs = np.asarray(network(np.ascontiguousarray(np.stack([image[(slice(None), *b)] for b in boxes]))))
        if outputs.ndim != 5 or outputs.shape[0] != len(boxes) or tuple(outputs.shape[2:]) != patch:
            raise InputError(f"the network gave outputs of shape {list(outputs.shape)} for {len(boxes)} patch(es) of "
                             f"{list(patch)}; a segmentation network gives (N, K, *patch)")  # fmt: skip
        if total is None:
            total = np.zeros((outputs.shape[1], *size), np.float32)
        for box, output in zip(boxes, outputs, strict=True):
            total[(slice(None), *box)] += output * weights
            counts[box] += weights
    assert total is not None
    total /= counts
    keep = tuple(slice(a, a + n) for (a, _), n in zip(pads, shape, strict=True))
    return total[(slice(None), *keep)]
