"""Data layer: manifests, data set adapters, patient-level splits, quality control and phantoms.

Public names are imported on first use (see :mod:`medsight.core.lazy`).
"""

from typing import TYPE_CHECKING

from medsight.core.lazy import lazy_exports

if TYPE_CHECKING:
    from medsight.data.manifest import Manifest
    from medsight.data.registry import build_manifest, detect_adapters, get_adapter, registered_adapters


__all__ = [
    "Manifest",
    "build_manifest",
    "detect_adapters",
    "get_adapter",
    "registered_adapters",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "medsight.data.manifest": ("Manifest",),
        "medsight.data.registry": ("build_manifest", "detect_adapters", "get_adapter", "registered_adapters"),
    },
)
