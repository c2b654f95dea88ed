"""Atomic writes: a failed write never leaves a half-written file or folder behind.

Temporaries are hidden siblings of the target named ``.NAME.PID-XXXXXXXX.tmp[.ext]`` (and
``.old`` for a folder being replaced). A process killed mid-write (kill -9, power loss)
cannot remove its own; the first atomic write of a process into that folder removes every
temporary whose process is gone (or, for names without a PID, that is over an hour old), and
``medsight clean FOLDER`` does the same on demand. Folders are created with the permissions
the umask gives, like every other tool (``mkdtemp`` alone would make them 0700).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medsight.core.errors import InputError

__all__ = ["atomic_dir", "atomic_file", "check_writable", "file_sha256", "full_suffix", "remove_stale_temporaries"]

log = logging.getLogger(__name__)

_DOUBLE_SUFFIXES = (".nii.gz", ".tar.gz")
# .NAME.PID-8hex.tmp[.ext] | .NAME.PID-8hex.old, and the PID-less names of earlier versions
_TEMPORARY = re.compile(r"^\..+\.(?:(?P<pid>\d+)-[0-9a-f]{8}|[a-z0-9_]{8})\.(?:tmp|old)(?:\.[A-Za-z0-9.]+)?$")
_UNKNOWN_OWNER_AGE_S = 3600.0
_OWNED_MAX_AGE_S = 24 * 3600.0


def _tag() -> str:
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _is_stale(path: Path, now: float) -> bool:
    match = _TEMPORARY.match(path.name)
    if match is None:
        return False
    try:
        age = now - path.lstat().st_mtime
    except FileNotFoundError:
        return False
    pid = match.group("pid")
    if pid is None:
        return age > _UNKNOWN_OWNER_AGE_S
    return int(pid) != os.getpid() and (not _alive(int(pid)) or age > _OWNED_MAX_AGE_S)


def remove_stale_temporaries(folder: str | os.PathLike[str], *, recursive: bool = False) -> list[Path]:
    """Remove the temporaries that killed writers left in ``folder``; return what was removed.

    A temporary is stale when the process named in it is gone (or it is over a day old), or,
    for names without a process id, when it is over an hour old. Files that do not look like
    medsight's temporaries are never touched.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now = time.time()
    removed: list[Path] = []
    walker = os.walk(folder) if recursive else [(str(folder), [], [])]
    for root, dirs, _ in walker:
        try:
            entries = list(Path(root).iterdir())
        except OSError:
            continue
        for entry in entries:
            if not _is_stale(entry, now):
                continue
            try:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            except OSError as exc:
                log.warning("could not remove the stale temporary %s: %s", entry, exc)
                continue
            removed.append(entry)
            if entry.name in dirs:
                dirs.remove(entry.name)
    for entry in removed:
        log.info("removed %s, left by an interrupted write", entry)
    return removed


_swept: set[Path] = set()


def _sweep_once(folder: Path) -> None:
    """Remove stale temporaries the first time this process writes into ``folder`` (not on every
    write: converting thousands of files into one folder would list it thousands of times)."""
    key = folder.resolve()
    if key not in _swept:
        _swept.add(key)
        remove_stale_temporaries(folder)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def full_suffix(path: str | os.PathLike[str]) -> str:
    """Lower-case extension including double ones such as ``.nii.gz``."""
    name = Path(path).name.lower()
    for double in _DOUBLE_SUFFIXES:
        if name.endswith(double):
            return double
    return Path(name).suffix


def check_writable(target: str | os.PathLike[str], *, option: str | None = None, file: bool = True) -> Path:
    """Refuse a path that cannot be written, before any work is done; return it as a Path.

    The one check behind every write (the atomic writers call it, and commands call it up
    front so a bad ``--out`` does not waste a long computation).

    Args:
        target: The file (or, with ``file=False``, the folder) to be written.
        option: The command-line option that named it (``"--out"``), to lead the message.
        file: When True, an existing folder at ``target`` is refused (a file name is needed).

    Raises:
        InputError: ``target`` is a folder where a file is needed, or its parent folder does
            not exist, is not a folder, or is not writable.
    """
    target = Path(target)
    subject = f"{option} {target}" if option else str(target)
    if file and target.is_dir():
        raise InputError(f"{subject} is a folder; give a file name inside it")
    parent = target.parent
    if not parent.exists():
        raise InputError(f"cannot write {subject}: folder {parent} does not exist; create it first (mkdir -p {parent})")
    if not parent.is_dir():
        raise InputError(f"cannot write {subject}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {subject}: folder {parent} is not writable for you; choose another place")
    return target


def _unwritable(target: Path, exc: OSError) -> InputError:
    """An OS error while writing, told about the user's path (not the hidden temporary)."""
    reason = exc.strerror or str(exc)
    return InputError(f"cannot write {target}: {reason} (is the place writable, with space left?)")


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
    target = check_writable(target)
    if target.exists() and not overwrite:
        raise InputError(f"{target} already exists; pass overwrite=True (--overwrite) to replace it")
    _sweep_once(target.parent)
    tmp = target.with_name(f".{target.name}.{_tag()}.tmp{full_suffix(target)}")
    try:
        yield tmp
        if not tmp.exists():
            raise InputError(f"writing {target} produced no file")
        os.replace(tmp, target)
    except OSError as exc:
        raise _unwritable(target, exc) from exc
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
    target = check_writable(target, file=False)
    if target.exists():
        if not target.is_dir():
            raise InputError(f"{target} exists and is not a folder; choose another output path")
        if any(target.iterdir()) and not overwrite:
            raise InputError(
                f"output folder {target} is not empty; choose a new folder or pass overwrite=True (--overwrite)"
            )
    _sweep_once(target.parent)
    tmp = target.with_name(f".{target.name}.{_tag()}.tmp")
    try:
        tmp.mkdir(mode=0o777)  # the umask applies, as for any folder a tool makes (mkdtemp forces 0700)
    except OSError as exc:
        raise _unwritable(target, exc) from exc
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.{_tag()}.old")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except OSError as exc:
        raise _unwritable(target, exc) from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
