"""Lazy package exports: a package names its public objects without importing their modules.

``import medsight.engine`` must not cost the two seconds of importing torch and MONAI when a
caller (the CLI's ``--help``, a recipe listing) needs none of it. A package's ``__init__``
maps each public name to the module that defines it; the module is imported on first
attribute access (PEP 562), and type checkers still see the names through
``if TYPE_CHECKING:`` imports.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module-level ``__getattr__`` and ``__dir__`` for ``package`` that import on first use.

    Args:
        package: The package's ``__name__``.
        exports: Public name -> absolute name of the module that defines it.

    Returns:
        ``(__getattr__, __dir__)`` to assign at the package's module level.

    Example:
        >>> getattr_, dir_ = lazy_exports("pkg", {"sqrt": "math"})
        >>> getattr_("sqrt")(9.0)
        3.0
    """

    def __getattr__(name: str) -> Any:  # noqa: N807  (the PEP 562 hook's name)
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    def __dir__() -> list[str]:  # noqa: N807
        return sorted(exports)

    return __getattr__, __dir__
