"""`medsight predict --ray` against one process, same package, same volumes, same run.

    python benchmarks/bench_ray.py                  # 16 cardiac MR frames, 2 workers
    python benchmarks/bench_ray.py --volumes 32 --workers 4

The cardiac-function recipe's U-Net is trained one epoch on phantoms as the demo trains it (16 base
filters, 12x64x64 patches) and exported; then its frames are predicted (label maps written):

- **one process**: ``Predictor.predict_files`` with torch using every core;
- **Ray, started for the run**: ``predict_on_ray`` with ``--workers`` workers of one CPU each, the
  start and stop of a Ray of this machine included (what one ``medsight predict --ray`` costs);
- **Ray, already running**: the same with Ray started beforehand (what a cluster that stays up costs).

Printed: seconds and volumes/s of each, and the ratios to one process. The CPU's instruction-set
class is printed with the figures. The rows are checked equal between the ways.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from medsight.core.hardware import cpu_class
from medsight.data import build_manifest
from medsight.data.phantoms import make_phantom
from medsight.engine.fit import fit
from medsight.engine.recipe import load_recipe
from medsight.export import export_package
from medsight.inference import Predictor
from medsight.inference.distributed import predict_on_ray

OVERRIDES = ["train.epochs=1", "evaluation.bootstrap=20", "preprocess.base_filters=16",
             "preprocess.overrides={spacing: [8.0, 2.5, 2.5], patch_size: [12, 64, 64], batch_size: 4, "
             "iterations_per_epoch: 5}"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volumes", type=int, default=16, help="cardiac MR frames to predict")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers (one CPU each)")
    args = parser.parse_args()
    import ray

    print(f"CPU: {cpu_class()}, {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cases = max(8, args.volumes // 2)
        folder = make_phantom("cardiac-function", work / "phantom", cases=cases, seed=0)
        build_manifest(folder).save(work / "manifest.csv")
        fit(load_recipe("cardiac-function", OVERRIDES), work / "manifest.csv", work / "run")
        package = export_package(work / "run", work / "package", format="onnx").folder
        frames = sorted(p for p in folder.rglob("*frame*.nii.gz") if "_gt" not in p.name)[: args.volumes]
        predictor = Predictor.from_run(package)
        predictor.predict_files(frames[:1], masks=work / "warm")  # warm-up

        started = time.perf_counter()
        alone = predictor.predict_files(frames, masks=work / "alone").table()
        seconds = {"one process": time.perf_counter() - started}

        started = time.perf_counter()
        spread = predict_on_ray(predictor, inputs=frames, workers=args.workers, masks=work / "ray").table()
        seconds[f"Ray started for the run, {args.workers} workers"] = time.perf_counter() - started

        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            predict_on_ray(predictor, inputs=frames[:2], workers=args.workers, masks=work / "warm")  # workers warm
            started = time.perf_counter()
            running = predict_on_ray(predictor, inputs=frames, workers=args.workers, masks=work / "ray2").table()
            seconds[f"Ray already running, {args.workers} workers"] = time.perf_counter() - started
        finally:
            ray.shutdown()
        scores = [c for c in alone.columns if c.startswith("volume_ml")]
        for other in (spread, running):
            assert list(other["input"]) == list(alone["input"])
            np.testing.assert_allclose(other[scores].to_numpy(float), alone[scores].to_numpy(float), rtol=1e-3)

    print(f"\n{len(frames)} cardiac MR frames (label maps written), the rows equal between the ways:")
    base = seconds["one process"]
    for name, value in seconds.items():
        print(
            f"  {name:36s} {value:7.2f} s  {len(frames) / value:6.2f} volumes/s  one process / this {base / value:5.2f}"
        )


if __name__ == "__main__":
    main()
