"""The torch-free runtime against the PyTorch-side predictor, same package.

    python benchmarks/bench_runtime.py                       # trains a cxr-findings package first
    python benchmarks/bench_runtime.py --package packages/cxr --images 64
    python benchmarks/bench_runtime.py --volumes 6           # a 3D segmenter (cardiac-function) instead

- **one image, a fresh process each time** (what a user or a PACS hook pays per call): the wall
  time of ``medsight predict PACKAGE image.png`` (the runtime: PyTorch never imported) against a
  fresh ``python -c`` that predicts the same image through ``Predictor.from_run(backend="onnx")``
  (what ``predict`` did before), median of ``--repeats``;
- **a batch, in this process**: ``predict_images`` against ``Predictor.predict_files`` on the same
  ``--images`` images (both warm), images/s and the ratio. The rows are checked equal.

The package is the cxr-findings recipe's DenseNet-121 at 224 px, trained one epoch on phantoms and
exported, unless ``--package`` names one. The CPU's instruction-set class is printed with the figures.

With ``--volumes N``: the cardiac-function recipe's U-Net as the demo trains it (one epoch on phantom
frames, 16 base filters, 12x64x64 windows), and N of its frames: one frame in a fresh process
(``medsight predict --backend onnx``, the runtime, against ``--backend auto``, PyTorch in the mode it
picks here), and the N frames in this process: the runtime, the Predictor on onnxruntime (MONAI's
windows) and on PyTorch (auto), seconds per volume and ratios; the label maps are compared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from medsight.core import Volume
from medsight.core.geometry import Geometry
from medsight.core.hardware import cpu_class
from medsight.data import build_manifest
from medsight.data.phantoms import make_phantom
from medsight.engine.fit import fit
from medsight.engine.recipe import load_recipe
from medsight.export import export_package
from medsight.inference import Predictor
from medsight.inference.runtime import predict_images, predict_volumes
from medsight.io import write

_OLD_WAY = """
import sys
from medsight.inference import Predictor
from medsight.io import write
Predictor.from_run(sys.argv[1], backend="onnx").predict_files([sys.argv[2]]).table().to_csv(sys.argv[3], index=False)
"""


def _package(work: Path) -> Path:
    folder = make_phantom("cxr-findings", work / "phantom", cases=60, seed=0)
    build_manifest(folder).save(work / "manifest.csv")
    fit(load_recipe("cxr-findings", ["train.epochs=1", "train.batch_size=8", "evaluation.bootstrap=20"]),
        work / "manifest.csv", work / "run")  # fmt: skip
    return export_package(work / "run", work / "package", format="onnx").folder


def _segmenter(work: Path) -> Path:
    folder = make_phantom("cardiac-function", work / "phantom3d", cases=8, seed=0)
    build_manifest(folder).save(work / "manifest3d.csv")
    fit(load_recipe("cardiac-function", ["train.epochs=1", "evaluation.bootstrap=20", "preprocess.base_filters=16",
                                         "preprocess.overrides={spacing: [8.0, 2.5, 2.5], patch_size: [12, 64, 64], "
                                         "batch_size: 4, iterations_per_epoch: 5}"]),
        work / "manifest3d.csv", work / "run3d")  # fmt: skip
    return export_package(work / "run3d", work / "package3d", format="onnx").folder


def _volumes(count: int, repeats: int) -> None:
    from medsight.io import read

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        package = _segmenter(work)
        frames = [p for p in sorted((work / "phantom3d").rglob("*frame*.nii.gz")) if "_gt" not in p.name][:count]
        one = frames[0]
        runtime_cmd = [sys.executable, "-m", "medsight", "predict", str(package), str(one), "--backend", "onnx",
                       "--out", str(work / "r.csv")]  # fmt: skip
        auto_cmd = [sys.executable, "-m", "medsight", "predict", str(package), str(one), "--out", str(work / "a.csv")]
        _wall(runtime_cmd), _wall(auto_cmd)
        fresh_runtime, fresh_auto = [], []
        for _ in range(repeats):
            fresh_runtime.append(_wall(runtime_cmd))
            fresh_auto.append(_wall(auto_cmd))
        onnx, auto = Predictor.from_run(package, backend="onnx"), Predictor.from_run(package)
        ways = {
            "runtime (NumPy windows, onnxruntime)": lambda masks: predict_volumes(package, frames, masks=masks),
            "Predictor, onnxruntime (MONAI windows)": lambda masks: onnx.predict_files(frames, masks=masks).table(),
            f"Predictor, PyTorch {auto.precision} (auto)": lambda masks: auto.predict_files(frames,
                                                                                           masks=masks).table(),
        }  # fmt: skip
        for k, way in enumerate(ways.values()):  # warm
            way(work / f"warm{k}")
        seconds, tables = {}, {}
        for k, (name, way) in enumerate(ways.items()):
            started = time.perf_counter()
            tables[name] = way(work / f"masks{k}")
            seconds[name] = (time.perf_counter() - started) / len(frames)
        names = list(ways)
        agree = {n: float(np.mean([np.mean(read(a).array == read(b).array) for a, b in
                                   zip(tables[names[0]]["output"], tables[n]["output"], strict=True)]))
                 for n in names[1:]}  # fmt: skip
    r, a = statistics.median(fresh_runtime), statistics.median(fresh_auto)
    print(f"\none frame, a fresh process each ({repeats} each, median):")
    print(f"  medsight predict --backend onnx (torch-free runtime)  {r:6.2f} s")
    print(f"  medsight predict (PyTorch, {auto.precision})                  {a:6.2f} s   auto / runtime {a / r:5.2f}")
    print(f"\n{len(frames)} frames in this process, all warm (seconds per volume; voxels agreeing with the runtime):")
    base = seconds[names[0]]
    for name in names:
        note = (
            f"   runtime speed-up {seconds[name] / base:5.2f}, labels agree {agree[name]:.4f}" if name in agree else ""
        )
        print(f"  {name:42s} {seconds[name]:6.2f} s{note}")


def _wall(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", type=Path, help="a 2D classifier package (default: train one)")
    parser.add_argument("--images", type=int, default=64, help="images in the batch")
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per way")
    parser.add_argument("--volumes", type=int, help="time a 3D segmenter on this many volumes instead")
    args = parser.parse_args()
    print(f"CPU: {cpu_class()}, {os.cpu_count()} cores", flush=True)
    if args.volumes:
        _volumes(args.volumes, args.repeats)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        package = args.package or _package(work)
        images = sorted(p for p in (work / "phantom").rglob("*.png"))[: args.images] if not args.package else []
        if not images:  # a package of one's own: its images are not here; any picture does for timing
            rng = np.random.default_rng(0)
            for k in range(args.images):
                write(Volume(rng.integers(0, 255, (1, 1, 256, 256)).astype(np.uint8), Geometry()),
                      work / f"img{k:03d}.png")  # fmt: skip
            images = sorted(work.glob("img*.png"))
        one, out = images[0], work / "one.csv"
        medsight = [sys.executable, "-m", "medsight", "predict", str(package), str(one), "--out", str(out)]
        old = [sys.executable, "-c", _OLD_WAY, str(package), str(one), str(work / "old.csv")]
        _wall(medsight), _wall(old)  # the page cache warm for both
        runtime, before = [], []
        for _ in range(args.repeats):
            runtime.append(_wall(medsight))
            before.append(_wall(old))
        pd.testing.assert_frame_equal(pd.read_csv(out), pd.read_csv(work / "old.csv"), rtol=1e-5, atol=1e-6)

        predictor = Predictor.from_run(package, backend="onnx")
        predictor.predict_files(images[:2]), predict_images(package, images[:2])  # warm
        started = time.perf_counter()
        theirs = predictor.predict_files(images).table()
        predictor_s = time.perf_counter() - started
        started = time.perf_counter()
        mine = predict_images(package, images)
        runtime_s = time.perf_counter() - started
        pd.testing.assert_frame_equal(mine, theirs, check_dtype=False, rtol=1e-5, atol=1e-6)

    r, b = statistics.median(runtime), statistics.median(before)
    print(f"\none image, a fresh process each ({args.repeats} each, median), the rows equal:")
    print(f"  medsight predict (torch-free runtime)       {r:6.2f} s")
    print(f"  Predictor on onnxruntime (imports PyTorch)  {b:6.2f} s   before / runtime {b / r:5.2f}")
    print(f"\n{len(images)} images in this process, both warm, the rows equal:")
    print(f"  runtime    {len(images) / runtime_s:7.1f} images/s")
    print(
        f"  Predictor  {len(images) / predictor_s:7.1f} images/s   runtime / Predictor {predictor_s / runtime_s:5.2f}"
    )


if __name__ == "__main__":
    main()
