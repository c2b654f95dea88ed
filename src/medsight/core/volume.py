"""`Volume`: pixels (channels first) that carry their geometry and typed metadata."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from medsight.core.errors import InputError
from medsight.core.geometry import Geometry

__all__ = ["Volume", "VolumeMetadata"]


@dataclass(frozen=True)
class VolumeMetadata:
    """Typed facts about where a volume came from and how to display it.

    Attributes:
        source_format: Reader that produced it (``"dicom"``, ``"dicom-series"``, ``"nifti"``,
            ``"nrrd"``, ``"mha"``, ``"png"``, ``"jpeg"``) or ``None`` for arrays made in code.
        modality: DICOM modality (``"CT"``, ``"MR"``, ``"CR"``...), when known.
        patient_id: DICOM PatientID.
        study_uid: StudyInstanceUID.
        series_uid: SeriesInstanceUID.
        sop_uids: SOPInstanceUIDs in slice order (one per file for a series).
        series_description: DICOM SeriesDescription.
        manufacturer: DICOM Manufacturer (scanner vendor), for subgroup analysis.
        laterality: ``"L"``/``"R"`` for images of one side (DICOM ImageLaterality, else Laterality).
        view: DICOM ViewPosition (``"CC"``, ``"MLO"``, ``"PA"``...).
        photometric_interpretation: As stored in the file (e.g. ``"MONOCHROME1"``).
        monochrome1_inverted: True when MONOCHROME1 pixels were inverted on reading.
        rescale: ``(slope, intercept)`` applied to stored values, when not identity.
        window: ``(centre, width)`` display window from the file, when present.
        frame_times_ms: For cine data read with frames as channels: time of each frame.
        channel_names: Names of the channels (e.g. ``("R", "G", "B")``), when known.
        spacing_assumed: True when the file had no spacing and 1 mm was assumed.
    """

    source_format: str | None = None
    modality: str | None = None
    patient_id: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    sop_uids: tuple[str, ...] = ()
    series_description: str | None = None
    manufacturer: str | None = None
    laterality: str | None = None
    view: str | None = None
    photometric_interpretation: str | None = None
    monochrome1_inverted: bool = False
    rescale: tuple[float, float] | None = None
    window: tuple[float, float] | None = None
    frame_times_ms: tuple[float, ...] | None = None
    channel_names: tuple[str, ...] | None = None
    spacing_assumed: bool = False

    def replace(self, **changes: object) -> VolumeMetadata:
        """Return a copy with some fields changed."""
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Volume:
    """An image: a channels-first array ``(C, Z, Y, X)`` with its :class:`Geometry`.

    2D images are volumes with ``Z == 1``; colour images have ``C == 3``. The array is
    kept in the dtype it was read in; nothing rescales it silently.

    Example:
        >>> v = Volume(np.zeros((1, 2, 3, 4), np.int16), Geometry())
        >>> v.spatial_shape, v.channels
        ((2, 3, 4), 1)
    """

    array: np.ndarray
    geometry: Geometry = field(default_factory=Geometry)
    metadata: VolumeMetadata = field(default_factory=VolumeMetadata)

    def __post_init__(self) -> None:
        if not isinstance(self.array, np.ndarray):
            raise InputError(f"Volume.array must be a numpy array, got {type(self.array).__name__}")
        if self.array.ndim != 4:
            raise InputError(
                f"Volume.array must be 4D (C, Z, Y, X), got shape {self.array.shape}; "
                "add axes with arr[None] (channel) or arr[:, None] (single slice)"
            )
        if 0 in self.array.shape:
            raise InputError(f"Volume.array has an empty axis: shape {self.array.shape}")

    @property
    def channels(self) -> int:
        """Number of channels C."""
        return int(self.array.shape[0])

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)``."""
        z, y, x = self.array.shape[1:]
        return int(z), int(y), int(x)

    @property
    def is_2d(self) -> bool:
        """True for a single slice."""
        return self.array.shape[1] == 1

    def intensity_range(self) -> tuple[float, float]:
        """Minimum and maximum finite value over all channels (NaN and infinities ignored;
        ``(nan, nan)`` when no value is finite)."""
        if self.array.dtype.kind in "fc":
            finite = self.array[np.isfinite(self.array)]
            if finite.size == 0:
                return float("nan"), float("nan")
            return float(finite.min()), float(finite.max())
        return float(self.array.min()), float(self.array.max())

    def nonfinite_count(self) -> int:
        """How many values are NaN or infinite (0 for integer images)."""
        if self.array.dtype.kind not in "fc":
            return 0
        return int(self.array.size - np.count_nonzero(np.isfinite(self.array)))

    def with_array(self, array: np.ndarray) -> Volume:
        """Same geometry and metadata, new pixels of the same spatial shape."""
        if array.ndim != 4 or tuple(array.shape[1:]) != self.spatial_shape:
            raise InputError(f"new array must have spatial shape {self.spatial_shape} (C, Z, Y, X), got {array.shape}")
        return replace(self, array=array)

    def replace(self, **changes: object) -> Volume:
        """Return a copy with some fields changed."""
        return replace(self, **changes)  # type: ignore[arg-type]
