"""Lazy package exports: a package names its public objects without importing their modules.

``import medsight.engine`` must not cost the two seconds of importing torch and MONAI when a
caller (the CLI's ``--help``, a recipe listing) needs none of it. A package's ``__init__``
maps each public name to the module that defines it; the module is imported on first
attribute access (PEP 562), and type checkers still see the names through
``if TYPE_CHECKING:`` imports.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, modules: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module-level ``__getattr__`` and ``__dir__`` for ``package`` that import on first use.

    Args:
        package: The package's ``__name__``.
        modules: Absolute module name -> the public names it defines.

    Returns:
        ``(__getattr__, __dir__)`` to assign at the package's module level.

    Example:
        >>> getattr_, dir_ = lazy_exports("pkg", {"math": ("sqrt",)})
        >>> getattr_("sqrt")(9.0)
        3.0
    """
    exports = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:  # noqa: N807  (the PEP 562 hook's name)
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    def __dir__() -> list[str]:  # noqa: N807
        return sorted(exports)

    return __getattr__, __dir__
