"""Fuzz targets for the readers: bytes in, a Volume or a typed MedsightError out, nothing else.

Shared by the CI smoke test (``test_fuzz_smoke.py``: a seeded mutator, 2,000 inputs per
target) and the long run (``scripts/fuzz.sh``: atheris, coverage-guided, 100,000 inputs per
target). Seeds are small valid files of each format, made here or taken from pydicom's tests.
"""

from __future__ import annotations

import functools
import io
import struct
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsight.core import Geometry, MedsightError, Volume, VolumeMetadata


@dataclass(frozen=True)
class Target:
    """A reader under test: how its input is written to disk and read back."""

    name: str
    suffix: str
    read: Callable[[Path], object]
    seeds: Callable[[], list[bytes]]


def _volume(shape: tuple[int, ...] = (1, 3, 6, 5), dtype: str = "int16") -> Volume:
    array = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
    return Volume(array, Geometry(spacing=(2.0, 0.8, 0.7), origin=(1.0, -2.0, 3.0)), VolumeMetadata(modality="CT"))


def _written(suffix: str, **kwargs: object) -> bytes:
    from medsight.io import write

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"seed{suffix}"
        write(_volume(**kwargs), path)  # type: ignore[arg-type]
        return path.read_bytes()


def _dicom_seeds() -> list[bytes]:
    from medsight.io import write_dicom_series

    seeds = []
    with tempfile.TemporaryDirectory() as tmp:
        write_dicom_series(_volume(), Path(tmp) / "s")
        seeds.append(sorted((Path(tmp) / "s").iterdir())[0].read_bytes())
    try:
        from pydicom.data import get_testdata_file
    except ImportError:  # pragma: no cover
        return seeds
    for name in ("CT_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "JPEG-LL.dcm", "rtdose.dcm",
                 "SC_rgb_rle_2frame.dcm", "emri_small.dcm", "mlut_18.dcm", "MR_small_bigendian.dcm"):  # fmt: skip
        path = get_testdata_file(name)
        if path is not None and Path(path).stat().st_size < 200_000:
            seeds.append(Path(path).read_bytes())
    return seeds


def _png_seeds() -> list[bytes]:
    from PIL import Image

    seeds = []
    for mode, size in (("L", (12, 9)), ("RGB", (7, 7)), ("I;16", (8, 6)), ("P", (5, 5)), ("RGBA", (4, 6))):
        buffer = io.BytesIO()
        Image.new(mode, size, color=3 if mode in ("L", "P", "I;16") else (10, 20, 30, 255)[: len(mode)]).save(
            buffer, format="PNG"
        )
        seeds.append(buffer.getvalue())
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), color=(200, 10, 10)).save(buffer, format="JPEG")
    seeds.append(buffer.getvalue())
    return seeds


def _manifest_seeds() -> list[bytes]:
    return [
        b"case_id,patient_id,image,split,target\nc1,p1,a.png,train,0\nc2,p2,b.png,val,1\n",
        b"case_id,patient_id,image_t1,label,target_effusion,site\nc1,p1,t1.nii.gz,l.nii.gz,,A\n",
        b"case_id;patient_id;image\nc1;p1;x.dcm\n",
    ]


def _read(path: Path) -> object:
    from medsight.io import read

    return read(path)


@functools.cache
def _good_slices() -> tuple[bytes, ...]:
    from medsight.io import write_dicom_series

    with tempfile.TemporaryDirectory() as tmp:
        write_dicom_series(_volume((1, 2, 6, 5)), Path(tmp) / "s")
        return tuple(p.read_bytes() for p in sorted((Path(tmp) / "s").iterdir()))


def _read_series(path: Path) -> object:
    """The fuzzed file as the middle slice of an otherwise valid three-slice series."""
    from medsight.io import read

    folder = path.with_suffix("")
    folder.mkdir()
    first, last = _good_slices()
    (folder / "0.dcm").write_bytes(first)
    (folder / "2.dcm").write_bytes(last)
    path.rename(folder / "1.dcm")
    return read(folder, series_uid="largest")


def _read_manifest(path: Path) -> object:
    from medsight.data import Manifest
    from medsight.data.qc import run_qc

    manifest = Manifest.load(path)
    return run_qc(manifest, read_images=False)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("dicom", ".dcm", _read, _dicom_seeds),
        Target("dicom-series", ".dcm", _read_series, lambda: _dicom_seeds()[:2]),
        Target("nifti", ".nii", _read, lambda: [_written(".nii"), _written(".nii", dtype="float32")]),
        Target("nifti-gz", ".nii.gz", _read, lambda: [_written(".nii.gz")]),
        Target("nrrd", ".nrrd", _read, lambda: [_written(".nrrd"), _written(".nrrd", dtype="float32")]),
        Target("mha", ".mha", _read, lambda: [_written(".mha")]),
        Target("png", ".png", _read, _png_seeds),
        Target("manifest", ".csv", _read_manifest, _manifest_seeds),
    )
}


class CrashError(Exception):
    """An input made a reader fail with something other than a MedsightError."""


def run_one(target: Target, data: bytes) -> str:
    """Feed ``data`` to ``target``; ``"ok"`` or ``"refused"``, or raise :class:`CrashError`."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"input{target.suffix}"
        path.write_bytes(data)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                target.read(path)
        except MedsightError:
            return "refused"
        except Exception as exc:  # anything else is a bug: the reader must say what is wrong
            raise CrashError(f"{target.name}: {type(exc).__name__}: {exc}") from exc
    return "ok"


_INTERESTING = (0, 1, 0x7F, 0x80, 0xFF)
_INTERESTING32 = (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFF, 0x10000)


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One to four random edits: bit flips, interesting bytes or 32-bit values, deletions,
    duplications, insertions, truncation (what breaks parsers in practice)."""
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        if not out:
            out += bytes(rng.integers(0, 256, 4, dtype=np.uint8))
            continue
        kind = int(rng.integers(0, 7))
        at = int(rng.integers(0, len(out)))
        if kind == 0:
            out[at] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:
            out[at] = _INTERESTING[int(rng.integers(0, len(_INTERESTING)))]
        elif kind == 2 and len(out) >= 4:
            at = min(at, len(out) - 4)
            value = _INTERESTING32[int(rng.integers(0, len(_INTERESTING32)))]
            out[at : at + 4] = struct.pack("<I" if rng.random() < 0.5 else ">I", value)
        elif kind == 3:
            del out[at : at + int(rng.integers(1, 64))]
        elif kind == 4:
            chunk = out[at : at + int(rng.integers(1, 64))]
            out[at:at] = chunk
        elif kind == 5:
            out[at:at] = bytes(rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8))
        else:
            del out[int(rng.integers(0, len(out))) :]
    return bytes(out)
