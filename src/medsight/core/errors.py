"""Typed errors raised by medsight.

Every error a user can cause derives from :class:`MedsightError`, so callers (and the
CLI) can catch one type. Messages name what was expected, what was found, and the fix.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "GeometryError",
    "InputError",
    "MedsightError",
    "SeriesError",
    "TrainingError",
    "UnsupportedFormatError",
]


class MedsightError(Exception):
    """Base class of every error medsight raises on purpose."""


class InputError(MedsightError):
    """A file, folder or array given by the user cannot be used (missing, corrupt, wrong shape)."""


class UnsupportedFormatError(InputError):
    """The file exists but is not in a format medsight reads or writes."""


class SeriesError(InputError):
    """A DICOM series is inconsistent: gaps, duplicates, mixed orientation or size, or ambiguity."""


class GeometryError(MedsightError):
    """Spatial information is missing or contradictory (spacing, orientation, position)."""


class ConfigError(MedsightError):
    """A configuration value or option is unknown or invalid."""


class TrainingError(MedsightError):
    """Training cannot go on (it diverged: the loss or its gradients stopped being finite)."""
