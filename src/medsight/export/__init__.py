"""Export: trained runs as portable model packages (weights, ONNX network, model card), and
predictions as DICOM (SEG, TID 1500 SR, secondary captures).

Public names are imported on first use (see :mod:`medsight.core.lazy`): the DICOM writers serve the
torch-free runtime without importing PyTorch, which exporting a network needs.
"""

from typing import TYPE_CHECKING

from medsight.core.lazy import lazy_exports

if TYPE_CHECKING:
    from medsight.export.package import ExportedPackage, export_network, export_package

__all__ = ["ExportedPackage", "export_network", "export_package"]

__getattr__, __dir__ = lazy_exports(
    __name__, {"medsight.export.package": ("ExportedPackage", "export_network", "export_package")}
)
