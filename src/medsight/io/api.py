"""`read` and `write`: one entry point for every image format medsight supports."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsight.core.errors import ConfigError
from medsight.core.progress import Progress
from medsight.io.formats import detect_format, output_format

if TYPE_CHECKING:
    from medsight.core.volume import Volume


__all__ = ["read", "write"]

log = logging.getLogger(__name__)


def read(
    path: str | os.PathLike[str],
    *,
    series_uid: str | None = None,
    allow_gaps: bool = False,
    invert_monochrome1: bool = False,
    slice_spacing: float | None = None,
    frames_as_channels: bool = False,
    progress: Progress | None = None,
) -> Volume:
    """Read an image file or a DICOM folder into a :class:`~medsight.core.Volume`.

    The format is detected from the content, not the name: a folder is read as a DICOM
    series; files may be DICOM (any transfer syntax pydicom + pylibjpeg decode), NIfTI,
    NRRD, MetaImage, PNG or JPEG.

    Args:
        path: File or folder.
        series_uid: DICOM folders only: which series, or ``"largest"``; required when the
            folder holds several series.
        allow_gaps: DICOM only: interpolate missing slices instead of failing.
        invert_monochrome1: DICOM only: invert MONOCHROME1 so high values are bright.
        slice_spacing: DICOM multi-frame only: frame spacing (mm) when the file lacks it.
        frames_as_channels: DICOM multi-frame only: read frames as time points (channels).
        progress: DICOM folders only: called as ``progress(stage, done, total)``.

    Returns:
        The volume, channels first ``(C, Z, Y, X)``, with LPS geometry.

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> read(get_testdata_file("MR_small.dcm")).geometry.orientation_code
        'LPS'
    """
    fmt = detect_format(path)
    dicom_only = {
        "series_uid": series_uid is not None,
        "allow_gaps": allow_gaps,
        "invert_monochrome1": invert_monochrome1,
        "slice_spacing": slice_spacing is not None,
        "frames_as_channels": frames_as_channels,
    }
    # each format's module (pydicom, nibabel, SimpleITK, Pillow) is imported only when it is needed
    if fmt == "dicom-series":
        from medsight.io.dicom_series import read_dicom_series

        if slice_spacing is not None or frames_as_channels:
            raise ConfigError("slice_spacing and frames_as_channels apply to a single multi-frame file, not a folder")
        return read_dicom_series(
            path,
            series_uid=series_uid,
            allow_gaps=allow_gaps,
            invert_monochrome1=invert_monochrome1,
            progress=progress,
        )
    if fmt == "dicom":
        from medsight.io.dicom import read_dicom_file

        if series_uid is not None:
            raise ConfigError("series_uid chooses a series in a folder; pass the folder, not a file")
        return read_dicom_file(
            path,
            invert_monochrome1=invert_monochrome1,
            slice_spacing=slice_spacing,
            frames_as_channels=frames_as_channels,
            allow_gaps=allow_gaps,
            force=True,
        )
    used = [name for name, given in dicom_only.items() if given]
    if used:
        raise ConfigError(f"options {used} apply to DICOM only; {path} is {fmt.upper()}")
    if fmt == "nifti":
        from medsight.io.nifti import read_nifti

        return read_nifti(path)
    if fmt in ("nrrd", "mha"):
        from medsight.io.itk import read_itk

        return read_itk(path, source_format=fmt)
    from medsight.io.image2d import read_image2d

    return read_image2d(path)


def write(
    volume: Volume,
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    overwrite: bool = False,
    window: tuple[float, float] | None = None,
    slice_index: int | None = None,
    modality: str | None = None,
    dicom_source: Any = None,
) -> Path:
    """Write a Volume; the format comes from ``format`` or the path's extension.

    ``.nii``/``.nii.gz`` (NIfTI), ``.nrrd``, ``.mha``, ``.png``, ``.jpg``; a path without
    extension is a DICOM series folder (one CT/MR file per slice). Writes are atomic.

    Args:
        volume: What to write.
        path: Output file, or folder for a DICOM series.
        format: Force a format (``"nifti"``, ``"nrrd"``, ``"mha"``, ``"png"``, ``"jpeg"``,
            ``"dicom-series"``).
        overwrite: Replace an existing output.
        window: PNG/JPEG only: ``(centre, width)`` to map values onto 8 bits.
        slice_index: PNG/JPEG only: which slice of a 3D volume.
        modality: DICOM only: ``"CT"`` or ``"MR"``.
        dicom_source: DICOM output only: the pydicom header of the series converted, whose
            patient, study, equipment and acquisition attributes the new series keeps.

    Returns:
        The path written.
    """
    fmt = output_format(path, format)
    if fmt not in ("png", "jpeg") and (window is not None or slice_index is not None):
        raise ConfigError(f"window and slice_index apply to PNG/JPEG output, not {fmt}")
    if fmt != "dicom-series" and (modality is not None or dicom_source is not None):
        raise ConfigError(f"modality and dicom_source apply to DICOM output, not {fmt}")
    if fmt == "nifti":
        from medsight.io.nifti import write_nifti

        return write_nifti(volume, path, overwrite=overwrite)
    if fmt in ("nrrd", "mha"):
        from medsight.io.itk import write_itk

        return write_itk(volume, path, overwrite=overwrite)
    if fmt in ("png", "jpeg"):
        from medsight.io.image2d import write_image2d

        return write_image2d(volume, path, slice_index=slice_index, window=window, overwrite=overwrite)
    from medsight.io.dicom_write import write_dicom_series

    write_dicom_series(volume, path, modality=modality, overwrite=overwrite, source=dicom_source)
    return Path(path)
