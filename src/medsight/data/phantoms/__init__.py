"""Phantoms with known ground truth for every recipe, written in public data set layouts.

The built-in generators are listed here explicitly (no folder walk); each is registered by
the module of the same name, imported the first time the registry is asked for, so listing
the names (the CLI's help) imports no generator.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from medsight.core.lazy import lazy_exports

if TYPE_CHECKING:
    from medsight.data.phantoms.base import make_phantom, phantoms

__all__ = ["BUILTIN_PHANTOMS", "load_builtin_phantoms", "make_phantom", "phantoms"]

BUILTIN_PHANTOMS = (
    "brain-tumor-seg",
    "cardiac-function",
    "cxr-findings",
    "dr-grading",
    "lung-nodule-det",
    "mammo-screening",
)
"""Recipe names of the built-in generators; ``dr-grading`` is registered by ``dr_grading.py``."""


def load_builtin_phantoms() -> None:
    """Import (and so register) every built-in generator; repeated calls cost nothing."""
    for recipe in BUILTIN_PHANTOMS:
        importlib.import_module(f"{__name__}.{recipe.replace('-', '_')}")


# the registry's functions come from base (numpy) on first use; the names above need nothing
__getattr__, _ = lazy_exports(__name__, {f"{__name__}.base": ("make_phantom", "phantoms")})
