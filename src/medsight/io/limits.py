"""A budget on how large an image a file may declare, checked before anything is decoded.

A 254 KB file can declare 65535 x 65535 pixels; decoding it would take minutes and
gigabytes before failing. Every reader compares the declared size with the data present
(where the format allows) and with this budget first, and refuses in milliseconds.
The budget is ``MEDSIGHT_MAX_IMAGE_BYTES`` (bytes, default 4 GiB) or :func:`set_max_image_bytes`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from medsight.core.errors import ConfigError, InputError

__all__ = ["DEFAULT_MAX_IMAGE_BYTES", "check_image_size", "max_image_bytes", "set_max_image_bytes"]

DEFAULT_MAX_IMAGE_BYTES = 4 * 1024**3
_ENV = "MEDSIGHT_MAX_IMAGE_BYTES"
_override: int | None = None


def _human(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def max_image_bytes() -> int:
    """The decoded-size budget in bytes: :func:`set_max_image_bytes`, else the environment, else 4 GiB."""
    if _override is not None:
        return _override
    text = os.environ.get(_ENV)
    if not text:
        return DEFAULT_MAX_IMAGE_BYTES
    try:
        value = int(float(text))
    except ValueError:
        raise ConfigError(f"{_ENV} must be a number of bytes (e.g. 8e9), got {text!r}") from None
    if value <= 0:
        raise ConfigError(f"{_ENV} must be positive, got {text!r}")
    return value


def set_max_image_bytes(value: int | None) -> None:
    """Set the budget for this process (``None``: back to the environment or the default)."""
    global _override
    if value is not None and value <= 0:
        raise ConfigError(f"the image budget must be positive, got {value}")
    _override = value


def check_image_size(shape: Sequence[int], itemsize: int, label: str) -> None:
    """Refuse an image whose declared ``shape`` of ``itemsize``-byte values exceeds the budget.

    Raises:
        InputError: naming the file, the declared size and how to raise the budget.
    """
    if any(int(n) < 0 for n in shape):
        raise InputError(
            f"{label} declares a negative image size {tuple(int(n) for n in shape)}; the header is corrupt"
        )
    need = math.prod(int(n) for n in shape) * int(itemsize)
    budget = max_image_bytes()
    if need > budget:
        size = " x ".join(str(int(n)) for n in shape)
        raise InputError(
            f"{label} declares an image of {size} values ({_human(need)} once decoded), above the "
            f"{_human(budget)} budget: the header is probably corrupt. If the image is real, raise the "
            f"budget with {_ENV}=BYTES"
        )
