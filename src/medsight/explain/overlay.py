"""Attribution maps drawn over their images (PNG, no display needed)."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

from medsight.core.heatmap import heat_rgba

__all__ = ["heat_rgba", "overlay_png"]  # heat_rgba: from medsight.core.heatmap


def _grey_rgb(image: np.ndarray) -> Image.Image:
    """A ``(C, H, W)`` image as an RGB picture: 3 channels as colour, else the first channel in grey;
    values in [0, 1] as they are, others (normalised 3D intensities) stretched from their 1st to
    99th percentile."""
    pixels = np.nan_to_num(image.astype(np.float64))
    pixels = pixels if pixels.shape[0] == 3 else np.repeat(pixels[:1], 3, axis=0)
    if pixels.size and (pixels.min() < 0 or pixels.max() > 1):
        low, high = np.percentile(pixels, [1, 99])
        pixels = (pixels - low) / max(high - low, 1e-6)
    pixels = np.clip(pixels, 0, 1)
    return Image.fromarray((np.moveaxis(pixels, 0, -1) * 255).round().astype(np.uint8), "RGB")


_MIN_SIDE = 256  # small inputs are drawn larger (whole-pixel scaling) so that a reader sees them


def overlay_png(
    image: np.ndarray,
    attribution: np.ndarray,
    path: str | os.PathLike[str],
    *,
    boxes: np.ndarray | None = None,
    title: str = "",
) -> None:
    """Save the input (left) beside the map over it (right): true ``boxes`` ``x0, y0, x1, y1`` (input
    pixels) in green, the map's peak as a cyan cross, ``title`` in the corner. Inputs under 256
    pixels a side are scaled up by a whole factor (nearest neighbour: each input pixel stays a block)."""
    base = _grey_rgb(image)
    heat = Image.fromarray(heat_rgba(attribution), "RGBA")
    if heat.size != base.size:
        heat = heat.resize(base.size, Image.Resampling.BILINEAR)
    scale = max(1, -(-_MIN_SIDE // max(base.size)))
    if scale > 1:
        size = (base.size[0] * scale, base.size[1] * scale)
        base, heat = base.resize(size, Image.Resampling.NEAREST), heat.resize(size, Image.Resampling.NEAREST)
    over = Image.alpha_composite(base.convert("RGBA"), heat).convert("RGB")
    draw = ImageDraw.Draw(over)
    for x0, y0, x1, y1 in [] if boxes is None else np.asarray(boxes, float).reshape(-1, 4) * scale:
        draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=(0, 230, 0), width=2)
    py, px = np.unravel_index(int(np.argmax(np.nan_to_num(attribution, nan=-np.inf))), attribution.shape)
    px, py = (px + 0.5) * scale, (py + 0.5) * scale
    arm = max(3, base.size[0] // 40)
    draw.line([px - arm, py, px + arm, py], fill=(0, 255, 255), width=2)
    draw.line([px, py - arm, px, py + arm], fill=(0, 255, 255), width=2)
    canvas = Image.new("RGB", (base.size[0] * 2, base.size[1]))
    canvas.paste(base, (0, 0))
    canvas.paste(over, (base.size[0], 0))
    if title:
        ImageDraw.Draw(canvas).text((4, 2), title, fill=(255, 255, 0))
    canvas.save(path, format="PNG")
