"""Read one case's image the way training and QC need it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medsight.core.errors import InputError
from medsight.core.volume import Volume
from medsight.data.manifest import Manifest
from medsight.io import detect_format, read

__all__ = ["read_case_image", "read_image_file"]


def read_image_file(path: str | os.PathLike[str]) -> Volume:
    """An image file or DICOM folder as a viewer shows it: DICOM MONOCHROME1 (white is low) is
    inverted, so every image reaches a network, a thumbnail or a QC check the same way round."""
    dicom = detect_format(path) in ("dicom", "dicom-series")
    return read(path, invert_monochrome1=True) if dicom else read(path)


def read_case_image(
    manifest: Manifest, row: pd.Series, column: str, npz_cache: dict[Path, Any] | None = None
) -> Volume:
    """The image in ``row[column]``: a file or DICOM folder (MONOCHROME1 shown as a viewer would),
    or one image of an array file (MedMNIST ``array_key``/``array_index``).

    ``npz_cache`` keeps array files open between calls; the caller closes them.
    """
    cell = row.get(column)
    if cell is None or (isinstance(cell, float) and np.isnan(cell)) or (isinstance(cell, str) and not cell.strip()):
        raise InputError(
            f"case {row.get('case_id', '?')}: its {column} cell is empty; give the image's path or drop the case"
        )
    path = manifest.resolve(cell)
    key = row.get("array_key")
    if not (isinstance(key, str) and key):
        return read_image_file(path)
    cache = {} if npz_cache is None else npz_cache
    if path not in cache:
        cache[path] = np.load(path)
    image = np.asarray(cache[path][key][int(row["array_index"])])
    if npz_cache is None:
        cache[path].close()
    if image.ndim == 2:  # (H, W)
        return Volume(image[None, None])
    if image.shape[-1] == 3:  # (H, W, RGB)
        return Volume(np.moveaxis(image, -1, 0)[:, None])
    return Volume(image[None])  # (D, H, W)
