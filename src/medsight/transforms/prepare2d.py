"""Images made ready for a 2D network with NumPy and Pillow alone (no PyTorch): windowed, converted
to the network's channels, padded square and resized, as training prepared them; and maps on that
grid brought back onto the image's. What the torch-free runtime and the training pipeline share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from medsight.core.errors import InputError
from medsight.core.volume import Volume

__all__ = [
    "Preprocess2D",
    "boxes_from_prepared",
    "boxes_to_prepared",
    "finite_or_filled",
    "map_to_image",
    "prepare_image",
]

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
CELL = 8  # the 2D detector's output cell: pixels of the prepared image per cell along each side


class Preprocess2D(BaseModel):
    """How every image is made ready for a 2D network (part of the model package).

    Attributes:
        size: Output side in pixels (square).
        channels: 1 (grey) or 3 (colour; grey images are replicated).
        window: ``"file"`` uses the image's own display window when it has one, else
            ``"percentile"``; ``"percentile"`` maps the 0.5-99.5th percentiles to 0-255.
            8-bit images are kept as they are.
        nonfinite: NaN or infinite pixels (float images): ``"error"`` refuses the image,
            ``"fill"`` gives them the lowest finite value (background). Statistics such as the
            percentile window always ignore them.
    """

    model_config = ConfigDict(extra="forbid")
    size: int = Field(224, ge=8, le=4096)
    channels: Literal[1, 3] = 3
    window: Literal["file", "percentile"] = "file"
    nonfinite: Literal["error", "fill"] = "error"


def finite_or_filled(data: np.ndarray, policy: Literal["error", "fill"]) -> np.ndarray:
    """``data`` unchanged when every value is finite; else refused, or NaN/inf set to the lowest finite value.

    Raises:
        InputError: non-finite values and ``policy == "error"`` (the message gives their count).
    """
    if data.dtype.kind not in "fc":
        return data
    bad = ~np.isfinite(data)
    if not bad.any():
        return data
    finite = data[~bad]
    if policy == "error" or finite.size == 0:
        raise InputError(
            f"{int(bad.sum())} of {data.size} pixel values are NaN or infinite"
            + ("" if finite.size else " (all of them)")
            + "; such an image would be scored as noise. Fix the file, or set preprocess.nonfinite=fill "
            "to give them the lowest finite value"
        )
    filled = data.copy()
    filled[bad] = finite.min()
    return filled


def _to_uint8(plane: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    if plane.dtype == np.uint8:
        return plane
    data = plane.astype(np.float32)
    if window is not None:
        centre, width = window
        lo, hi = centre - width / 2, centre + width / 2
    else:
        lo, hi = np.percentile(data, [0.5, 99.5])
    if hi <= lo:
        hi = lo + 1.0
    return (np.clip((data - lo) / (hi - lo), 0, 1) * 255 + 0.5).astype(np.uint8)


def prepare_image(volume: Volume, spec: Preprocess2D, *, slice_index: int | None = None) -> np.ndarray:
    """A Volume -> ``(spec.channels, size, size)`` uint8: windowed, channel-converted, padded square, resized.

    A 3D volume needs ``slice_index`` (which slice to classify): a 2D model never picks one
    silently. Colour images with an alpha channel lose it.

    Raises:
        InputError: a 3D volume without ``slice_index``, a slice out of range, a channel
            count other than 1 or 3, or NaN/infinite pixels (unless ``spec.nonfinite`` fills them).
    """
    depth = volume.spatial_shape[0]
    if slice_index is None and depth > 1:
        raise InputError(
            f"this is a 3D volume of {depth} slices; a 2D model classifies one slice: choose it with "
            f"--slice N (0..{depth - 1})"
        )
    index = 0 if slice_index is None else slice_index
    if not -depth <= index < depth:
        raise InputError(f"slice {index} is outside this volume's {depth} slice(s) (0..{depth - 1})")
    plane = finite_or_filled(volume.array[:, index], spec.nonfinite)  # (C, H, W)
    if plane.shape[0] == 4:
        plane = plane[:3]
    if plane.shape[0] not in (1, 3):
        raise InputError(f"2D classification takes 1- or 3-channel images; this one has {plane.shape[0]} channels")
    window = volume.metadata.window if spec.window == "file" else None
    plane = _to_uint8(plane, window)
    if spec.channels == 3 and plane.shape[0] == 1:
        plane = np.repeat(plane, 3, axis=0)
    elif spec.channels == 1 and plane.shape[0] == 3:
        plane = np.tensordot(_LUMA, plane.astype(np.float32), axes=1).round().astype(np.uint8)[None]
    c, h, w = plane.shape
    side = max(h, w)
    square = np.zeros((c, side, side), np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    square[:, top : top + h, left : left + w] = plane
    resized = [
        np.asarray(Image.fromarray(square[i]).resize((spec.size, spec.size), Image.Resampling.BILINEAR))
        for i in range(c)
    ]
    return np.stack(resized)


def map_to_image(prepared: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A map on the grid :func:`prepare_image` made (``(size, size)``, e.g. an attribution map) back
    on the image's own ``(H, W)`` grid: resized to the padded square (bilinear), the padding cut off."""
    height, width = int(shape[0]), int(shape[1])
    side = max(height, width)
    square = np.asarray(Image.fromarray(np.asarray(prepared, np.float32), mode="F").resize(
        (side, side), Image.Resampling.BILINEAR))  # fmt: skip
    top, left = (side - height) // 2, (side - width) // 2
    return square[top : top + height, left : left + width].copy()


def _square(shape: tuple[int, int], size: int) -> tuple[float, float, float]:
    """``prepare_image``'s padding (top, left) and scale for a source image of ``shape`` (height, width)."""
    h, w = shape
    if h <= 0 or w <= 0:
        raise InputError(f"an image of {h}x{w} pixels has no area")
    side = max(h, w)
    return (side - h) // 2, (side - w) // 2, size / side


def boxes_to_prepared(boxes: np.ndarray, shape: tuple[int, int], size: int) -> np.ndarray:
    """``(n, 4)`` boxes ``x0, y0, x1, y1`` in a source image's pixels -> the same boxes in the
    ``size``-pixel image :func:`prepare_image` makes of it (padded square, resized)."""
    top, left, scale = _square(shape, size)
    offset = np.array([left, top, left, top], np.float64)
    return (np.asarray(boxes, np.float64).reshape(-1, 4) + offset) * scale


def boxes_from_prepared(boxes: np.ndarray, shape: tuple[int, int], size: int) -> np.ndarray:
    """The inverse of :func:`boxes_to_prepared`, clipped to the source image."""
    top, left, scale = _square(shape, size)
    offset = np.array([left, top, left, top], np.float64)
    out = np.asarray(boxes, np.float64).reshape(-1, 4) / scale - offset
    h, w = shape
    return np.clip(out, 0, [w, h, w, h])
