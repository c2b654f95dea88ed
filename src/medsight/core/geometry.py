"""Where voxels are in the patient: the one spatial convention medsight uses.

Conventions (stated once, used everywhere):

* Arrays are indexed ``(z, y, x)``; a 2D image has ``z`` of length 1.
* ``spacing`` is ``(z, y, x)`` in millimetres, matching the array axes.
* World coordinates are DICOM patient coordinates, **LPS**: ``(x, y, z)`` where +x points to
  the patient's left, +y to posterior, +z to superior. Conversion to RAS happens only
  where a file format demands it (NIfTI).
* ``direction`` is a 3x3 matrix whose **column i** is the unit world vector along which
  array axis i increases (column 0: z/slice axis, 1: y/row axis, 2: x/column axis).
* ``origin`` is the world position (mm) of the centre of voxel ``(0, 0, 0)``.
* ``orientation_code`` follows the ITK/DICOM habit: three letters for the x, y and z axes
  (array axes 2, 1, 0), each naming the direction the axis points *towards*. An axial
  DICOM series is ``"LPS"``; a typical NIfTI from a neuroimaging pipeline is ``"RAS"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from medsight.core.errors import GeometryError

__all__ = ["Geometry", "orientation_code"]

_ORTHO_TOL = 1e-4
_POSITIVE = ("L", "P", "S")
_NEGATIVE = ("R", "A", "I")


def _as_triple(name: str, value: Sequence[float]) -> tuple[float, float, float]:
    arr = np.asarray(value, dtype=float).reshape(-1)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise GeometryError(f"{name} must be 3 finite numbers, got {value!r}")
    return (float(arr[0]), float(arr[1]), float(arr[2]))


def orientation_code(direction: np.ndarray) -> str:
    """Return the three-letter orientation code of a direction matrix.

    Args:
        direction: 3x3 matrix, columns are the world (LPS) unit vectors of array axes
            ``(z, y, x)``.

    Returns:
        Letters for the x, y, z axes (array axes 2, 1, 0), e.g. ``"LPS"``.

    Example:
        >>> orientation_code(np.eye(3)[:, ::-1])
        'LPS'
    """
    d = np.asarray(direction, dtype=float)
    letters = []
    for axis in (2, 1, 0):
        column = d[:, axis]
        k = int(np.argmax(np.abs(column)))
        letters.append(_POSITIVE[k] if column[k] > 0 else _NEGATIVE[k])
    return "".join(letters)


@dataclass(frozen=True)
class Geometry:
    """Spacing, origin and direction of a voxel grid in LPS patient coordinates.

    Attributes:
        spacing: Voxel size ``(z, y, x)`` in mm, all positive.
        origin: World position ``(x, y, z)`` LPS in mm of the centre of voxel (0, 0, 0).
        direction: Row-major 3x3 matrix (as nested tuples); column i is the world unit
            vector of array axis i. Must be orthonormal.
        frame_of_reference_uid: DICOM Frame of Reference UID, when known.

    Example:
        >>> g = Geometry(spacing=(5.0, 0.5, 0.5))
        >>> g.index_to_world([1, 0, 2]).tolist()
        [1.0, 0.0, 5.0]
    """

    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[tuple[float, float, float], ...] = field(
        default=((0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0))
    )
    frame_of_reference_uid: str | None = None

    def __post_init__(self) -> None:
        spacing = _as_triple("spacing", self.spacing)
        if min(spacing) <= 0:
            raise GeometryError(f"spacing must be positive (z, y, x) mm, got {spacing}")
        origin = _as_triple("origin", self.origin)
        d = np.asarray(self.direction, dtype=float)
        if d.shape != (3, 3) or not np.all(np.isfinite(d)):
            raise GeometryError(f"direction must be a finite 3x3 matrix, got {self.direction!r}")
        if not np.allclose(d.T @ d, np.eye(3), atol=_ORTHO_TOL):
            raise GeometryError(
                "direction must be orthonormal (columns are unit axis vectors at right angles); "
                f"got {d.round(5).tolist()}. Sheared grids (e.g. gantry tilt) must be resampled first."
            )
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", tuple(tuple(float(v) for v in row) for row in d))

    # -- derived views -------------------------------------------------------------------
    @property
    def direction_matrix(self) -> np.ndarray:
        """The direction as a new 3x3 float array (columns: axes z, y, x)."""
        return np.array(self.direction, dtype=float)

    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous ``(z, y, x, 1)`` indices to LPS world ``(x, y, z, 1)``."""
        a = np.eye(4)
        a[:3, :3] = self.direction_matrix * np.asarray(self.spacing)[None, :]
        a[:3, 3] = self.origin
        return a

    @property
    def orientation_code(self) -> str:
        """Three letters for the x, y, z axes, e.g. ``"LPS"`` (see module docstring)."""
        return orientation_code(self.direction_matrix)

    # -- transforms ----------------------------------------------------------------------
    def index_to_world(self, index: Sequence[float] | np.ndarray) -> np.ndarray:
        """Map ``(..., 3)`` voxel indices ``(z, y, x)`` to LPS world ``(x, y, z)`` in mm."""
        idx = np.asarray(index, dtype=float)
        a = self.affine
        return idx @ a[:3, :3].T + a[:3, 3]

    def world_to_index(self, point: Sequence[float] | np.ndarray) -> np.ndarray:
        """Map ``(..., 3)`` LPS world points ``(x, y, z)`` mm to continuous ``(z, y, x)`` indices."""
        pts = np.asarray(point, dtype=float)
        a = self.affine
        return (pts - a[:3, 3]) @ np.linalg.inv(a[:3, :3]).T

    def far_corner(self, shape: Sequence[int]) -> np.ndarray:
        """World position of the centre of the last voxel of a grid of spatial ``shape``."""
        return self.index_to_world(np.asarray(shape[-3:], dtype=float) - 1.0)

    def isclose(self, other: Geometry, *, atol: float = 1e-4) -> bool:
        """True when spacing, origin and direction agree within ``atol`` (mm / cosine)."""
        return bool(
            np.allclose(self.spacing, other.spacing, atol=atol)
            and np.allclose(self.origin, other.origin, atol=atol)
            and np.allclose(self.direction_matrix, other.direction_matrix, atol=atol)
        )

    def replace(self, **changes: object) -> Geometry:
        """Return a copy with some fields changed (validated again)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_affine(cls, affine: np.ndarray, *, frame_of_reference_uid: str | None = None) -> Geometry:
        """Build a Geometry from a 4x4 ``(z, y, x) -> LPS`` affine such as :attr:`affine`."""
        a = np.asarray(affine, dtype=float)
        if a.shape != (4, 4):
            raise GeometryError(f"affine must be 4x4, got shape {a.shape}")
        cols = a[:3, :3]
        spacing = np.linalg.norm(cols, axis=0)
        if np.any(spacing <= 0):
            raise GeometryError(f"affine has a zero-length axis: {a.round(5).tolist()}")
        return cls(
            spacing=tuple(spacing),  # type: ignore[arg-type]
            origin=tuple(a[:3, 3]),  # type: ignore[arg-type]
            direction=tuple(map(tuple, cols / spacing[None, :])),  # type: ignore[arg-type]
            frame_of_reference_uid=frame_of_reference_uid,
        )

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dictionary (spacing z,y,x; origin x,y,z LPS; direction row-major)."""
        return {
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": [list(row) for row in self.direction],
            "orientation": self.orientation_code,
            "frame_of_reference_uid": self.frame_of_reference_uid,
        }
