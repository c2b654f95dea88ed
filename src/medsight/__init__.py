"""medsight: deep learning on medical images, from DICOM in to validated DICOM out."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("medsight")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
