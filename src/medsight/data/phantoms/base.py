"""Registry and shared machinery of the phantom generators (one module per recipe)."""

from __future__ import annotations

import csv
import difflib
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from medsight.core.errors import ConfigError, InputError
from medsight.core.parallel import default_workers, run_cases
from medsight.core.progress import Progress
from medsight.io.atomic import atomic_dir

__all__ = [
    "Phantom",
    "Progress",
    "case_rng",
    "default_data_dir",
    "default_workers",
    "make_phantom",
    "phantoms",
    "register_phantom",
    "run_cases",
    "write_table",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
Writer = Callable[..., None]  # write(out_dir, cases, seed, progress[, data_dir=...])


@dataclass(frozen=True)
class Phantom:
    """A generator of cases with known ground truth, written in a public data set's layout."""

    recipe: str
    layout: str  # the adapter that reads what it writes
    description: str
    write: Writer
    uses_data: bool = False  # builds on real images (``write`` takes ``data_dir``)

    @property
    def options(self) -> dict[str, object]:
        """The phantom's own settings (keyword-only arguments of ``write`` beyond ``data_dir``)
        with their defaults."""
        import inspect

        return {name: p.default for name, p in inspect.signature(self.write).parameters.items()
                if p.kind is p.KEYWORD_ONLY and name != "data_dir"}  # fmt: skip


_REGISTRY: dict[str, Phantom] = {}


def register_phantom(
    recipe: str, *, layout: str, description: str, uses_data: bool = False
) -> Callable[[Writer], Writer]:
    """Decorator registering ``write(out_dir, cases, seed, progress)`` for ``recipe`` (with
    ``uses_data``, ``write`` also takes ``data_dir=``: the folder of real images it builds on)."""

    def wrap(write: Writer) -> Writer:
        if recipe in _REGISTRY:
            raise ConfigError(f"phantom {recipe!r} is registered twice")
        _REGISTRY[recipe] = Phantom(recipe, layout, description, write, uses_data)
        return write

    return wrap


def phantoms() -> dict[str, Phantom]:
    """All registered phantom generators by recipe."""
    from medsight.data.phantoms import load_builtin_phantoms

    load_builtin_phantoms()

    return dict(sorted(_REGISTRY.items()))


def write_table(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Write a CSV with a header row (the public data sets' tables are plain CSV)."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def case_rng(seed: int, index: int, *, stream: int = 0) -> np.random.Generator:
    """The random stream of one case: independent of how many cases are made or in what order.

    ``stream`` separates independent uses of the same index (e.g. per-patient draws).
    """
    return np.random.default_rng([seed, stream, index])


def default_data_dir() -> Path | None:
    """Where the real images some phantoms build on are looked for when no folder is given:
    ``$MEDSIGHT_DATA_DIR``, else ``shared/data`` beside or inside the working folder; None when
    none of these exists."""
    given = os.environ.get("MEDSIGHT_DATA_DIR")
    candidates = [Path(given)] if given else [Path.cwd().parent / "shared" / "data", Path.cwd() / "shared" / "data"]
    return next((p for p in candidates if p.is_dir()), None)


def _typed(name: str, value: object, default: object) -> object:
    """A phantom option's value as the type of its default (``--option`` gives text: ``cine=false``,
    ``voxel_mm=2``).

    Raises:
        ConfigError: a value that is not one of that type."""
    if isinstance(default, bool):
        text = str(value).strip().lower()
        if isinstance(value, bool) or text in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value if isinstance(value, bool) else text in ("true", "yes", "on", "1")
        raise ConfigError(f"{name} must be true or false (default {default}), got {value!r}")
    if isinstance(default, int | float):
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number (default {default}), got {value!r}") from None
        if isinstance(default, int) and not number.is_integer():
            raise ConfigError(f"{name} must be a whole number (default {default}), got {value!r}")
        return int(number) if isinstance(default, int) else number
    return value


def make_phantom(
    recipe: str,
    out: str | os.PathLike[str],
    *,
    cases: int = 100,
    seed: int = 0,
    overwrite: bool = False,
    progress: Progress | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    options: Mapping[str, object] | None = None,
) -> Path:
    """Write ``cases`` phantom cases of ``recipe`` into ``out`` (atomically: all or nothing).

    ``data_dir``: the folder of real images the brain and lung phantoms build on (Colin27 in
    ``mricron/``, the lung CT in ``radiomics/``); by default :func:`default_data_dir`.
    ``options``: the phantom's own settings (:attr:`Phantom.options`, e.g. ``voxel_mm`` of the
    brain phantom), each taken as its default's type (text such as ``"false"`` or ``"2"`` too); a
    name it does not have, or a value not of that type, is a :class:`ConfigError`.

    Returns:
        ``out``, which the matching adapter (``phantoms()[recipe].layout``) reads.
    """
    known = phantoms()
    if recipe not in known:
        close = difflib.get_close_matches(recipe, list(known), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"no phantom for recipe {recipe!r}.{hint} Recipes: {', '.join(known)}")
    if cases < 1:
        raise ConfigError(f"cases must be at least 1, got {cases}")
    phantom = known[recipe]
    options = dict(options or {})
    unknown = sorted(set(options) - set(phantom.options))
    if unknown:
        has = ", ".join(f"{k} (default {v})" for k, v in phantom.options.items()) or "none"
        raise ConfigError(f"the {recipe} phantom has no option {', '.join(map(repr, unknown))}; its options: {has}")
    options = {name: _typed(name, value, phantom.options[name]) for name, value in options.items()}
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    if data_dir is not None and not folder.is_dir():
        raise InputError(f"--data-dir {folder} is not a folder")
    start = time.perf_counter()
    with atomic_dir(out, overwrite=overwrite) as tmp:
        if phantom.uses_data:
            phantom.write(tmp, cases, seed, progress, data_dir=folder, **options)
        else:
            phantom.write(tmp, cases, seed, progress, **options)
    log.info("made %d %s phantom case(s) in %.1f s", cases, recipe, time.perf_counter() - start)
    return Path(out)
