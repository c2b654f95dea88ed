"""Image input and output: DICOM files and series, NIfTI, NRRD/MetaImage, PNG/JPEG.

`read` and `write` are the entry points; the format modules are usable on their own.

Public names are imported on first use (see :mod:`medsight.core.lazy`).
"""

from typing import TYPE_CHECKING

from medsight.core.lazy import lazy_exports

if TYPE_CHECKING:
    from medsight.io.api import read, write
    from medsight.io.dicom import read_dicom_file
    from medsight.io.dicom_series import DicomFolder, SeriesInfo, list_dicom_series, read_dicom_series
    from medsight.io.dicom_write import write_dicom_image, write_dicom_series
    from medsight.io.formats import detect_format


__all__ = [
    "DicomFolder",
    "SeriesInfo",
    "detect_format",
    "list_dicom_series",
    "read",
    "read_dicom_file",
    "read_dicom_series",
    "write",
    "write_dicom_image",
    "write_dicom_series",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "medsight.io.dicom_series": ("DicomFolder", "SeriesInfo", "list_dicom_series", "read_dicom_series"),
        "medsight.io.formats": ("detect_format",),
        "medsight.io.api": ("read", "write"),
        "medsight.io.dicom": ("read_dicom_file",),
        "medsight.io.dicom_write": ("write_dicom_image", "write_dicom_series"),
    },
)
