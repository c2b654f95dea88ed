"""Data layer: manifests, data set adapters, patient-level splits, quality control and phantoms."""

from medsight.data.manifest import Manifest
from medsight.data.registry import adapters, build_manifest, detect_adapters, get_adapter

__all__ = ["Manifest", "adapters", "build_manifest", "detect_adapters", "get_adapter"]
