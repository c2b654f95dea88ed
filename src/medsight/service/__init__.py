"""The clinical service (``medsight serve``): receive studies, route them to models, write DICOM
results, keep a triage worklist and an append-only audit log. Needs the ``serve`` extra."""

from medsight.service.config import ServeConfig, load_serve_config

__all__ = ["ServeConfig", "load_serve_config"]
