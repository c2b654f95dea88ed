"""Small matplotlib helpers shared by the validation report's figures."""

from __future__ import annotations

import base64
import io
import math
from typing import Any

__all__ = ["panels", "png"]


def png(figure: Any) -> str:
    """``figure`` as a PNG data URL (96 dpi, tight bounding box); the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def panels(count: int) -> tuple[Any, list[Any]]:
    """A figure with ``count`` panels, at most three to a row; the grid's spare cells hidden."""
    import matplotlib.pyplot as plt

    columns = min(count, 3)
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.2 * rows), squeeze=False)
    for axis in axes.ravel()[count:]:
        axis.set_visible(False)
    return figure, list(axes.ravel()[:count])
