"""Data layer: manifests, data set adapters, patient-level splits, quality control and phantoms."""

from medsight.data.manifest import Manifest
from medsight.data.registry import build_manifest, detect_adapters, get_adapter, registered_adapters

__all__ = ["Manifest", "build_manifest", "detect_adapters", "get_adapter", "registered_adapters"]
