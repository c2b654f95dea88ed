"""Preprocess each case once into a memory-mapped array, so training epochs only augment.

A cache folder holds ``images.npy`` (``N x C x S x S`` uint8, memory-mapped) and
``index.json`` (the preprocessing spec, the case ids, each source image's height and width, and
a key made from the spec and each file's path, size and modification time). A cache whose key
matches is reused; anything else rebuilds it, atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel

from medsight.core.errors import InputError, MedsightError
from medsight.core.progress import Progress
from medsight.data.manifest import Manifest
from medsight.data.reading import read_case_image
from medsight.io.atomic import atomic_dir
from medsight.transforms.prepare2d import Preprocess2D, prepare_image

__all__ = ["ImageCache", "build_image_cache", "built", "cache_key", "default_cache_dir", "reuse"]

log = logging.getLogger(__name__)

_VERSION = 2  # 2: the source images' shapes are kept
T = TypeVar("T")


@dataclass(frozen=True)
class ImageCache:
    """Preprocessed images of a manifest, in manifest order."""

    folder: Path
    images: np.ndarray  # memory-mapped (N, C, S, S) uint8
    case_ids: tuple[str, ...]
    spec: Preprocess2D
    shapes: tuple[tuple[int, int], ...] = ()  # each source image's (height, width), for boxes drawn on it

    def __len__(self) -> int:
        return len(self.case_ids)


def default_cache_dir(manifest: Manifest, name: str, spec: BaseModel | None = None) -> Path:
    """Where training and evaluation keep a recipe's preprocessed images: beside the manifest, one
    folder per preprocessing spec and set of cases (two runs at different image sizes, or on two
    manifests of one folder, keep their own caches instead of rebuilding each other's). Without
    ``spec``, one folder per set of cases (for caches that key their own subfolders by what
    preprocessing does)."""
    folder = manifest.root / ".medsight-cache" / name
    cases = "\n".join(str(c) for c in manifest.table["case_id"]) if "case_id" in manifest.table else ""
    described = json.dumps(spec.model_dump(), sort_keys=True) if spec is not None else ""
    digest = hashlib.sha256(described.encode() + cases.encode()).hexdigest()
    return folder / digest[:12]


def cache_key(manifest: Manifest, columns: Sequence[str], spec: Mapping[str, Any]) -> str:
    """What a cache of ``manifest`` depends on: ``spec`` (how it preprocesses), and each case's files
    under ``columns`` by path, size and modification time (and array key/index for array files)."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode())
    for _, row in manifest.table.iterrows():
        for column in columns:
            cell = row.get(column)
            if not isinstance(cell, str) or not cell.strip():
                continue
            path = manifest.resolve(cell)
            try:
                stat = path.stat()
                fingerprint = f"{stat.st_size}:{stat.st_mtime_ns}"
            except OSError:
                fingerprint = "missing"
            extra = f"{row.get('array_key', '')}:{row.get('array_index', '')}"
            digest.update(f"{row['case_id']}|{column}|{path}|{fingerprint}|{extra}\n".encode())
    return digest.hexdigest()


def reuse(folder: Path, key: str, open_cache: Callable[[Path], T]) -> T | None:
    """The cache in ``folder`` opened with ``open_cache`` when its ``index.json`` records ``key``;
    None when there is none, it was made from other inputs, or it is unreadable (then rebuilt)."""
    index_file = folder / "index.json"
    if not index_file.is_file():
        return None
    try:
        if json.loads(index_file.read_text()).get("key") == key:
            log.info("reusing the preprocessed cache in %s", folder)
            return open_cache(folder)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("rebuilding unreadable cache %s (%s)", folder, exc)
    return None


def built(folder: Path, key: str, open_cache: Callable[[Path], T]) -> T:
    """The cache just built into ``folder``, opened, after checking it is still this build's: another
    process that built a cache of other inputs into the same folder at the same time may have
    replaced it, and its images must never be taken for these.

    Raises:
        InputError: the folder now holds a cache of other inputs (with the fix).
    """
    try:
        same = json.loads((folder / "index.json").read_text()).get("key") == key
    except (OSError, ValueError) as exc:
        raise InputError(f"the preprocessed cache {folder} vanished or broke right after it was built ({exc}); "
                         "is another process writing there? Run again, or give each run its own cache "
                         "folder") from exc  # fmt: skip
    if not same:
        raise InputError(f"another process replaced the preprocessed cache {folder} with one of other cases while "
                         "this one built it (two runs preparing different data in one folder at once): run again, "
                         "or give each run its own cache folder")  # fmt: skip
    return open_cache(folder)


def _open(folder: Path) -> ImageCache:
    index = json.loads((folder / "index.json").read_text())
    images = np.load(folder / "images.npy", mmap_mode="r")
    shapes = tuple((int(h), int(w)) for h, w in index.get("shapes", ()))
    return ImageCache(folder, images, tuple(index["case_ids"]), Preprocess2D(**index["spec"]), shapes)


def build_image_cache(
    manifest: Manifest,
    spec: Preprocess2D,
    folder: str | os.PathLike[str],
    *,
    column: str = "image",
    progress: Progress | None = None,
) -> ImageCache:
    """Preprocess ``manifest[column]`` into ``folder`` (or reuse a matching cache there).

    Raises:
        InputError: a case's image cannot be read (the message names the case; run
            ``medsight data qc`` to list every problem at once).
    """
    folder = Path(folder)
    if column not in manifest.table.columns:
        raise InputError(f"manifest has no {column!r} column; image columns: {manifest.image_columns}")
    key = cache_key(manifest, [column], {"version": _VERSION, "spec": spec.model_dump()})
    if (reused := reuse(folder, key, _open)) is not None:
        return reused
    folder.parent.mkdir(parents=True, exist_ok=True)
    n = len(manifest)
    npz_cache: dict[Path, Any] = {}
    shapes: list[list[int]] = []
    with atomic_dir(folder, overwrite=True) as tmp:
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                           shape=(n, spec.channels, spec.size, spec.size))  # fmt: skip
        for i, (_, row) in enumerate(manifest.table.iterrows()):
            try:
                volume = read_case_image(manifest, row, column, npz_cache)
                images[i] = prepare_image(volume, spec)
                shapes.append([int(s) for s in volume.spatial_shape[-2:]])
            except MedsightError as exc:
                raise InputError(
                    f"case {row['case_id']}: cannot prepare {row[column]}: {exc}. "
                    "Run `medsight data qc` on the manifest to find every such problem"
                ) from exc
            if progress is not None:
                progress("preprocessing images", i + 1, n)
        images.flush()
        del images
        index = {
            "key": key,
            "version": _VERSION,
            "spec": spec.model_dump(),
            "case_ids": list(manifest.table["case_id"]),
            "shapes": shapes,
        }
        (tmp / "index.json").write_text(json.dumps(index))
    for data in npz_cache.values():
        data.close()
    log.info("preprocessed %d images into %s", n, folder)
    return built(folder, key, _open)
