"""NRRD and MetaImage (.mha/.mhd) through SimpleITK, which already uses LPS."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medsight.core.errors import InputError
from medsight.core.geometry import Geometry
from medsight.core.volume import Volume, VolumeMetadata
from medsight.io.atomic import atomic_file
from medsight.io.limits import check_image_size

__all__ = ["read_itk", "write_itk"]

log = logging.getLogger(__name__)


def read_itk(path: str | os.PathLike[str], *, source_format: str = "nrrd") -> Volume:
    """Read an image SimpleITK understands (NRRD, MetaImage) into a Volume.

    Vector pixels become channels; a 4th spatial dimension (time) becomes channels too.
    """
    path = Path(path)
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()  # the header alone: the declared size is checked before reading
        bits = re.search(r"(\d+)-bit", sitk.GetPixelIDValueAsString(reader.GetPixelID()))
        size = (*reader.GetSize(), reader.GetNumberOfComponents())
        check_image_size(size, int(bits.group(1)) // 8 if bits else 8, str(path))
        img = reader.Execute()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise InputError(f"{path} could not be read as {source_format.upper()}: {first}") from exc
    dim = img.GetDimension()
    if dim not in (2, 3, 4):
        raise InputError(f"{path}: {dim}D images are not supported (2D, 3D or 3D+time)")
    array = sitk.GetArrayFromImage(img)  # (z, y, x[, c]) / (y, x[, c]) / (t, z, y, x)
    if img.GetNumberOfComponentsPerPixel() > 1:
        array = np.moveaxis(array, -1, 0)
    else:
        array = array[None]
    if dim == 4:  # (1, t, z, y, x) -> (t, z, y, x)
        array = array[0]
    if dim == 2:
        array = array[:, None]
    spacing = np.ones(3)
    origin = np.zeros(3)
    direction = np.eye(3)
    n = min(dim, 3)
    spacing[:n] = img.GetSpacing()[:n]
    origin[:n] = img.GetOrigin()[:n]
    direction[:n, :n] = np.asarray(img.GetDirection()).reshape(dim, dim)[:n, :n]
    geometry = Geometry(
        spacing=tuple(spacing[::-1]),  # type: ignore[arg-type]
        origin=tuple(origin),  # type: ignore[arg-type]
        direction=tuple(map(tuple, direction[:, ::-1])),  # type: ignore[arg-type]
    )
    meta = VolumeMetadata(source_format=source_format)
    return Volume(np.ascontiguousarray(array), geometry, meta)


def write_itk(volume: Volume, path: str | os.PathLike[str], *, overwrite: bool = True, compress: bool = True) -> Path:
    """Write a Volume as ``.nrrd`` or ``.mha`` (one file, compressed by default).

    Several channels are written as vector pixels. The file appears complete or not at all.
    """
    array = volume.array
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    vector = volume.channels > 1
    data = np.moveaxis(array, 0, -1) if vector else array[0]
    img = sitk.GetImageFromArray(np.ascontiguousarray(data), isVector=vector)
    geo = volume.geometry
    img.SetSpacing(tuple(float(s) for s in geo.spacing[::-1]))
    img.SetOrigin(tuple(float(o) for o in geo.origin))
    img.SetDirection(tuple(float(v) for v in geo.direction_matrix[:, ::-1].ravel()))
    with atomic_file(path, overwrite=overwrite) as tmp:
        try:
            sitk.WriteImage(img, str(tmp), compress)
        except RuntimeError as exc:
            raise InputError(f"could not write {path}: {str(exc).strip().splitlines()[-1]}") from exc
    log.info("wrote %s", path)
    return Path(path)
