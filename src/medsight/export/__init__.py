"""Export: trained runs as portable model packages (weights, ONNX network, model card)."""

from medsight.export.package import ExportedPackage, export_network, export_package

__all__ = ["ExportedPackage", "export_network", "export_package"]
