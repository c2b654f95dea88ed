"""Attribution and probability maps as colour, for pictures a reader looks at (explanations'
overlays, the heat-map secondary captures of DICOM results)."""

from __future__ import annotations

import numpy as np

__all__ = ["heat_rgba"]


def heat_rgba(attribution: np.ndarray) -> np.ndarray:
    """``(H, W, 4)`` uint8: the map's positive part scaled by its 99.5th percentile, coloured with
    matplotlib's ``inferno`` and as opaque as it is strong (weak evidence stays see-through)."""
    from matplotlib import colormaps

    positive = np.clip(np.nan_to_num(attribution.astype(np.float64)), 0, None)
    top = float(np.percentile(positive, 99.5)) if positive.any() else 0.0
    scaled = np.clip(positive / top, 0, 1) if top > 0 else np.zeros_like(positive)
    rgba = colormaps["inferno"](scaled)
    rgba[..., 3] = 0.75 * np.sqrt(scaled)
    return (rgba * 255).round().astype(np.uint8)
