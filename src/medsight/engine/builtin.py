"""The recipes shipped with medsight, listed without importing the engine (the CLI's help needs them)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["builtin_recipes"]


def builtin_recipes() -> dict[str, Path]:
    """Recipe name -> YAML file shipped with medsight."""
    folder = resources.files("medsight.engine") / "recipes"
    return {p.name.removesuffix(".yaml"): Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}
