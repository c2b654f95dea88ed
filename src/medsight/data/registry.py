"""Registry of data set adapters: each turns one public data set's layout into a Manifest."""

from __future__ import annotations

import difflib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from medsight.core.errors import ConfigError, InputError
from medsight.data.manifest import Manifest

__all__ = [
    "Adapter",
    "NoOptions",
    "build_manifest",
    "detect_adapters",
    "get_adapter",
    "register",
    "registered_adapters",
]

log = logging.getLogger(__name__)

_REGISTRY: dict[str, type[Adapter]] = {}


class NoOptions(BaseModel):
    """Adapters without options accept none (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")


class Adapter(ABC):
    """Reads one public data set exactly as it is downloaded.

    Subclasses set ``name`` (used on the command line), ``title``, ``task`` (recipe it
    serves) and optionally an ``Options`` pydantic model, and implement :meth:`detect` and
    :meth:`build`. Register them with :func:`register`.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    task: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = NoOptions

    @classmethod
    @abstractmethod
    def detect(cls, root: Path) -> bool:
        """True when ``root`` looks like this data set (cheap: file names and CSV headers only)."""

    @classmethod
    @abstractmethod
    def build(cls, root: Path, options: Any) -> Manifest:
        """Read the layout under ``root`` into a Manifest."""


def register(adapter: type[Adapter]) -> type[Adapter]:
    """Class decorator adding an adapter to the registry."""
    if adapter.name in _REGISTRY:
        raise ConfigError(f"adapter name {adapter.name!r} is registered twice")
    _REGISTRY[adapter.name] = adapter
    return adapter


def registered_adapters() -> dict[str, type[Adapter]]:
    """All registered adapters by name."""
    _load_builtin()
    return dict(sorted(_REGISTRY.items()))


def get_adapter(name: str) -> type[Adapter]:
    """The adapter called ``name``; unknown names get a suggestion."""
    known = registered_adapters()
    if name not in known:
        close = difflib.get_close_matches(name, list(known), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown data set format {name!r}.{hint} Known formats: {', '.join(known)}")
    return known[name]


def detect_adapters(root: str | os.PathLike[str]) -> list[str]:
    """Names of the adapters whose layout matches ``root``."""
    path = Path(root)
    if not path.exists():
        raise InputError(f"{path} does not exist; point at the data set's top folder (or a manifest .csv)")
    if not path.is_dir():
        raise InputError(f"{path} is not a folder; point at the data set's top folder")
    return [name for name, adapter in registered_adapters().items() if adapter.detect(path)]


def _options(adapter: type[Adapter], options: Mapping[str, Any] | None) -> BaseModel:
    try:
        return adapter.Options(**dict(options or {}))
    except ValidationError as exc:
        fields = list(adapter.Options.model_fields)
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            + (
                f" (did you mean {difflib.get_close_matches(str(e['loc'][0]), fields, n=1)[0]!r}?)"
                if e["type"] == "extra_forbidden" and difflib.get_close_matches(str(e["loc"][0]), fields, n=1)
                else ""
            )
            for e in exc.errors()
        )
        raise ConfigError(f"bad options for {adapter.name}: {problems}. Options it takes: {fields or 'none'}") from None


def build_manifest(
    root: str | os.PathLike[str],
    *,
    format: str = "auto",
    options: Mapping[str, Any] | None = None,
) -> Manifest:
    """Read a data set folder into a Manifest.

    Args:
        root: The data set's top folder, as downloaded. A ``.csv`` file is read with the
            generic ``csv`` adapter, an ``.npz`` file with ``medmnist``.
        format: Adapter name, or ``"auto"`` to detect it from the layout.
        options: Adapter options (e.g. ``{"uncertain": "ones"}`` for CheXpert).
    """
    path = Path(root)
    if path.is_file() and path.suffix.lower() == ".csv" and format in ("auto", "csv"):
        format, path, options = "csv", path.parent, {**dict(options or {}), "csv": path.name}
    elif path.is_file() and path.suffix.lower() == ".npz" and format in ("auto", "medmnist"):
        format = "medmnist"
    elif not path.exists():
        raise InputError(f"{path} does not exist; point at the data set's top folder (or a manifest .csv)")
    elif not path.is_dir():
        raise InputError(f"{path} is not a folder; point at the data set's top folder")
    if format == "auto":
        found = detect_adapters(path)
        if not found:
            raise InputError(
                f"could not recognise the layout of {path}; pass --format with one of: "
                f"{', '.join(registered_adapters())} (docs/datasets.md describes each layout)"
            )
        if len(found) > 1:
            raise InputError(f"{path} matches several layouts ({', '.join(found)}); choose one with --format")
        format = found[0]
        log.info("detected %s layout in %s", format, path)
    adapter = get_adapter(format)
    manifest = adapter.build(path, _options(adapter, options))
    manifest.info.setdefault("dataset", adapter.name)
    manifest.info.setdefault("task", adapter.task)
    return manifest


def _load_builtin() -> None:
    # Importing the package registers every built-in adapter (explicit list there).
    import medsight.data.adapters  # noqa: F401
