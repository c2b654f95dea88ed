"""NIfTI-1/2 reading and writing with nibabel. The only place RAS meets LPS.

NIfTI stores data as ``(i, j, k[, t])`` with an affine to RAS+ world coordinates. medsight
keeps ``(C, z, y, x)`` arrays and LPS: here the axes are reversed and the first two world
axes are negated, so world positions are unchanged.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from medsight.core.errors import InputError
from medsight.core.geometry import Geometry
from medsight.core.volume import Volume, VolumeMetadata
from medsight.io.atomic import atomic_file
from medsight.io.limits import check_image_size

__all__ = ["read_nifti", "write_nifti"]

log = logging.getLogger(__name__)

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# NIfTI ijk (x, y, z) index order <-> medsight (z, y, x): swap columns 0 and 2.
_SWAP = [2, 1, 0, 3]


def read_nifti(path: str | os.PathLike[str]) -> Volume:
    """Read a ``.nii`` / ``.nii.gz`` file.

    A 4th dimension (time, or modality as in the Medical Segmentation Decathlon) becomes
    channels. ``scl_slope``/``scl_inter`` are applied (float32 result) only when not identity.
    """
    path = Path(path)
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise InputError(f"{path} is not a readable NIfTI file: {_reason(exc)}") from exc
    shape = tuple(int(n) for n in img.header.get_data_shape())
    itemsize = img.header.get_data_dtype().itemsize
    check_image_size(shape, itemsize, str(path))  # before any voxel is read
    if not str(path).lower().endswith(".gz"):  # uncompressed: the voxels must all be in the file
        need = int(img.header.get_data_offset()) + int(np.prod(shape, dtype=np.int64)) * itemsize
        if path.stat().st_size < need:
            raise InputError(
                f"{path} is truncated: its header declares {shape} voxels ({need} bytes with the header), "
                f"the file holds {path.stat().st_size} bytes"
            )
    try:
        raw = np.asarray(img.dataobj.get_unscaled())
    except Exception as exc:
        raise InputError(f"{path} is not a readable NIfTI file: {_reason(exc)}") from exc
    slope = getattr(img.dataobj, "slope", 1.0)
    inter = getattr(img.dataobj, "inter", 0.0)
    data = raw
    if slope is not None and np.isfinite(slope) and slope != 0 and (slope != 1.0 or (inter or 0.0) != 0.0):
        data = raw.astype(np.float32) * np.float32(slope) + np.float32(inter or 0.0)

    while data.ndim > 4 and data.shape[3] == 1:  # (x, y, z, 1, c) as written by some tools
        data = data.reshape(data.shape[:3] + data.shape[4:])
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        raise InputError(f"{path}: NIfTI with {data.ndim} dimensions {data.shape} is not supported (at most 4)")
    array = np.ascontiguousarray(np.transpose(data, (3, 2, 1, 0)))  # (C, z, y, x)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)

    affine = _LPS_FROM_RAS @ img.affine
    geometry = Geometry.from_affine(affine[:, _SWAP])
    meta = VolumeMetadata(source_format="nifti", rescale=None if data is raw else (float(slope), float(inter or 0.0)))
    return Volume(array, geometry, meta)


def _reason(exc: Exception) -> str:
    """nibabel's message, or the error's type when it has none (e.g. a bare EOFError)."""
    text = str(exc).strip()
    return f"{text} ({type(exc).__name__})" if text else f"{type(exc).__name__}: the file is truncated or corrupt"


def write_nifti(volume: Volume, path: str | os.PathLike[str], *, overwrite: bool = True) -> Path:
    """Write a Volume as NIfTI-1 (``.nii`` or ``.nii.gz``), qform and sform both scanner-aligned.

    Several channels are written as a 4th dimension. The file appears complete or not at all.
    """
    array = volume.array
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype == np.int64:
        if array.min() < np.iinfo(np.int32).min or array.max() > np.iinfo(np.int32).max:
            raise InputError("int64 values outside the int32 range cannot be written to NIfTI portably")
        array = array.astype(np.int32)
    data = np.transpose(array, (3, 2, 1, 0))  # (x, y, z, C)
    if data.shape[3] == 1:
        data = data[..., 0]
    ras = _LPS_FROM_RAS @ volume.geometry.affine[:, _SWAP]
    img = nib.Nifti1Image(np.ascontiguousarray(data), ras)
    img.set_qform(ras, code=1)
    img.set_sform(ras, code=1)
    img.header.set_xyzt_units(xyz="mm")
    if volume.metadata.window is not None:
        c, w = volume.metadata.window
        img.header["cal_min"], img.header["cal_max"] = c - w / 2, c + w / 2
    with atomic_file(path, overwrite=overwrite) as tmp:
        nib.save(img, str(tmp))
    log.info("wrote %s", path)
    return Path(path)
