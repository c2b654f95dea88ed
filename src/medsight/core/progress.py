"""The progress callback every long-running library function accepts."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Progress"]

Progress = Callable[[str, int, int], None]
"""Called as ``progress(stage, done, total)``; a stage written ``"name | detail"`` updates one row."""
