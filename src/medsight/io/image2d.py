"""PNG and JPEG with Pillow: 8/16-bit grey and RGB photographs and exports."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from medsight.core.errors import InputError
from medsight.core.geometry import Geometry
from medsight.core.volume import Volume, VolumeMetadata
from medsight.io.atomic import atomic_file
from medsight.io.limits import check_image_size

__all__ = ["apply_window", "read_image2d", "write_image2d"]

log = logging.getLogger(__name__)


def read_image2d(path: str | os.PathLike[str]) -> Volume:
    """Read a PNG or JPEG file as a one-slice Volume ``(C, 1, H, W)``.

    Grey images give one channel (uint8, or uint16 for 16-bit PNG); colour images give
    three (RGB; palette images are expanded; an opaque alpha channel is dropped, a
    non-opaque one is kept as a 4th channel). JPEG EXIF orientation is applied. Spacing is
    unknown in these formats: 1 mm is assumed and recorded in ``metadata.spacing_assumed``.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own checks say more
            with Image.open(path) as img:  # the header only: the size is checked before decoding
                _check_declared_size(img, path)
                img.load()
                fmt = (img.format or "").lower()
                img = ImageOps.exif_transpose(img)
                array = _to_array(img)
    except Image.DecompressionBombError as exc:
        raise InputError(
            f"{path} declares more pixels than any radiograph or photograph holds ({exc}); the header is "
            "probably corrupt"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path} is not a readable PNG/JPEG image (truncated or corrupt?): {exc}") from exc
    channels = array.shape[0]
    names = {1: None, 3: ("R", "G", "B"), 4: ("R", "G", "B", "A")}[channels]
    meta = VolumeMetadata(
        source_format="jpeg" if fmt in ("jpeg", "mpo") else "png",
        photometric_interpretation="MONOCHROME2" if channels == 1 else "RGB",
        channel_names=names,
        spacing_assumed=True,
    )
    return Volume(array[:, None], Geometry(), meta)


# deflate's best case is about 1032:1 (PNG); JPEG's is lower. A file whose declared pixels
# would need more than this much compression is truncated or lies about its size.
_MAX_COMPRESSION = 1100


def _check_declared_size(img: Image.Image, path: Path) -> None:
    width, height = img.size
    bands = len(img.getbands())
    itemsize = 2 if img.mode.startswith("I;16") else 4 if img.mode in ("I", "F") else 1
    check_image_size((height, width, bands), itemsize, str(path))
    present = path.stat().st_size
    declared = width * height * bands * itemsize
    if declared > _MAX_COMPRESSION * max(present, 1):
        raise InputError(
            f"{path} declares {width}x{height} pixels ({declared} bytes) but holds only {present} bytes, more "
            "than any PNG/JPEG can compress: the file is truncated or its header is corrupt"
        )


def _to_array(img: Image.Image) -> np.ndarray:
    """Pillow image -> ``(C, H, W)`` array in the image's own bit depth."""
    mode = img.mode
    if mode in ("1", "LA", "L"):
        return np.asarray(img.convert("L"))[None]
    if mode.startswith("I;16"):
        return np.asarray(img).astype(np.uint16)[None]
    if mode == "I":  # 16-bit PNG opened as 32-bit integers by some Pillow versions
        arr = np.asarray(img)
        if arr.min() >= 0 and arr.max() <= 65535:
            arr = arr.astype(np.uint16)
        return arr[None]
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "RGBa"):
        arr = np.asarray(img.convert("RGBA"))
        if np.all(arr[..., 3] == 255):
            arr = arr[..., :3]
        return np.moveaxis(arr, -1, 0)
    if mode != "RGB":
        img = img.convert("RGB")
    return np.moveaxis(np.asarray(img), -1, 0)


def apply_window(array: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Map values through a display window ``(centre, width)`` onto uint8 0..255."""
    centre, width = window
    if width <= 0:
        raise InputError(f"window width must be positive, got {width}")
    low = centre - width / 2.0
    scaled = (array.astype(np.float32) - np.float32(low)) / np.float32(width)
    return np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def _fit_integer(array: np.ndarray, fmt: str) -> np.ndarray:
    """Store values exactly as uint8 (or uint16 for grey PNG) when they fit; else refuse."""
    if array.dtype in (np.uint8, np.uint16) and not (fmt == "jpeg" and array.dtype == np.uint16):
        return array
    finite = np.all(np.isfinite(array)) if array.dtype.kind == "f" else True
    integral = array.dtype.kind in "iub" or (finite and bool(np.all(np.mod(array, 1) == 0)))
    lo, hi = (float(array.min()), float(array.max())) if finite else (float("nan"), float("nan"))
    if integral and lo >= 0 and hi <= 255:
        return array.astype(np.uint8)
    if integral and fmt == "png" and array.shape[0] == 1 and lo >= 0 and hi <= 65535:
        return array.astype(np.uint16)
    raise InputError(
        f"values {lo:g}..{hi:g} ({array.dtype}) do not fit an 8-bit{' or 16-bit grey' if fmt == 'png' else ''} "
        f"{fmt.upper()} without rescaling; pass window=(centre, width) (--window C,W) to map them to 0..255"
    )


def write_image2d(
    volume: Volume,
    path: str | os.PathLike[str],
    *,
    slice_index: int | None = None,
    window: tuple[float, float] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write one slice of a Volume as PNG (8/16-bit grey, 8-bit RGB) or JPEG (8-bit, quality 95).

    Values are written exactly when they fit the format; otherwise a ``window`` must be
    given to map them to 8 bits (nothing is rescaled silently).

    Args:
        volume: One (grey) or three (RGB) channels.
        path: ``.png``, ``.jpg`` or ``.jpeg``.
        slice_index: Which slice of a 3D volume (default: the only slice; required for 3D).
        window: ``(centre, width)`` display window; the volume's own window is not applied
            unless passed here.
        overwrite: Replace an existing file.
    """
    path = Path(path)
    fmt = "jpeg" if path.suffix.lower() in (".jpg", ".jpeg") else "png"
    if volume.channels not in (1, 3):
        raise InputError(f"{fmt.upper()} holds 1 (grey) or 3 (RGB) channels; this volume has {volume.channels}")
    nz = volume.spatial_shape[0]
    if slice_index is None:
        if nz != 1:
            raise InputError(f"a {fmt.upper()} holds one slice; this volume has {nz}: pass slice_index (--slice N)")
        slice_index = 0
    if not -nz <= slice_index < nz:
        raise InputError(f"slice_index {slice_index} is outside 0..{nz - 1}")
    plane = volume.array[:, slice_index]
    plane = apply_window(plane, window) if window is not None else _fit_integer(plane, fmt)
    # Pillow picks the mode from the array: (H, W, 3) uint8 -> RGB, uint8 -> L, uint16 -> I;16
    pixels = np.moveaxis(plane, 0, -1) if plane.shape[0] == 3 else plane[0]
    img = Image.fromarray(np.ascontiguousarray(pixels))
    with atomic_file(path, overwrite=overwrite) as tmp:
        if fmt == "jpeg":
            img.save(tmp, format="JPEG", quality=95)
        else:
            img.save(tmp, format="PNG")
    log.info("wrote %s", path)
    return path
