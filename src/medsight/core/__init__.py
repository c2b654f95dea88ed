"""Core objects every layer shares: geometry, volumes, label schemas and errors.

Public names are imported on first use (see :mod:`medsight.core.lazy`).
"""

from typing import TYPE_CHECKING

from medsight.core.lazy import lazy_exports

if TYPE_CHECKING:
    from medsight.core.errors import (
        ConfigError,
        GeometryError,
        InputError,
        MedsightError,
        SeriesError,
        TrainingError,
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
    "TrainingError",
    "UnsupportedFormatError",
    "Volume",
    "VolumeMetadata",
    "orientation_code",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "medsight.core.labels": ("CodedConcept", "LabelClass", "LabelSchema"),
        "medsight.core.errors": (
            "ConfigError",
            "GeometryError",
            "InputError",
            "MedsightError",
            "SeriesError",
            "TrainingError",
            "UnsupportedFormatError",
        ),
        "medsight.core.geometry": ("Geometry", "orientation_code"),
        "medsight.core.volume": ("Volume", "VolumeMetadata"),
    },
)
