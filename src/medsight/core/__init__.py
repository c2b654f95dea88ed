"""Core objects every layer shares: geometry, volumes, label schemas and errors."""

from medsight.core.errors import (
    ConfigError,
    GeometryError,
    InputError,
    MedsightError,
    SeriesError,
    UnsupportedFormatError,
)
from medsight.core.geometry import Geometry, orientation_code
from medsight.core.labels import CodedConcept, LabelClass, LabelSchema
from medsight.core.volume import Volume, VolumeMetadata

__all__ = [
    "CodedConcept",
    "ConfigError",
    "Geometry",
    "GeometryError",
    "InputError",
    "LabelClass",
    "LabelSchema",
    "MedsightError",
    "SeriesError",
    "UnsupportedFormatError",
    "Volume",
    "VolumeMetadata",
    "orientation_code",
]
