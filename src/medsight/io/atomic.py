"""Atomic writes: a failed write never leaves a half-written file or folder behind."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medsight.core.errors import InputError

__all__ = ["atomic_dir", "atomic_file", "full_suffix"]

log = logging.getLogger(__name__)

_DOUBLE_SUFFIXES = (".nii.gz", ".tar.gz")


def full_suffix(path: str | os.PathLike[str]) -> str:
    """Lower-case extension including double ones such as ``.nii.gz``."""
    name = Path(path).name.lower()
    for double in _DOUBLE_SUFFIXES:
        if name.endswith(double):
            return double
    return Path(name).suffix


def _check_parent(target: Path) -> None:
    parent = target.parent
    if not parent.exists():
        raise InputError(f"cannot write {target}: folder {parent} does not exist (create it first)")
    if not parent.is_dir():
        raise InputError(f"cannot write {target}: {parent} is not a folder")


@contextmanager
def atomic_file(target: str | os.PathLike[str], *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` with the same extension; move it into place on success.

    The temporary file keeps the target's full extension (``.nii.gz``) so writers that pick a
    format from the name behave the same. On any exception the temporary file is removed
    and ``target`` is untouched.

    Args:
        target: Final file path.
        overwrite: When False, an existing ``target`` is an :class:`InputError`.
    """
    target = Path(target)
    _check_parent(target)
    if target.exists() and not overwrite:
        raise InputError(f"{target} already exists; pass overwrite=True (--overwrite) to replace it")
    if target.is_dir():
        raise InputError(f"{target} is a folder; give a file name")
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp{full_suffix(target)}")
    try:
        yield tmp
        if not tmp.exists():
            raise InputError(f"writing {target} produced no file")
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_dir(target: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; rename it to ``target`` on success.

    An existing empty ``target`` folder is replaced. A non-empty one is an
    :class:`InputError` unless ``overwrite`` is True, in which case it is replaced only
    after the new folder is complete.
    """
    target = Path(target)
    _check_parent(target)
    if target.exists():
        if not target.is_dir():
            raise InputError(f"{target} exists and is not a folder; choose another output path")
        if any(target.iterdir()) and not overwrite:
            raise InputError(
                f"output folder {target} is not empty; choose a new folder or pass overwrite=True (--overwrite)"
            )
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
