"""Nodule detection on a whole chest CT (~300 x 512 x 512): medsight's prediction path against the
same network in plain eager fp32, same weights, plan, ROI and overlap, same process.

    python benchmarks/bench_detect.py            # 300 x 512 x 512 at 1.0 x 0.7 x 0.7 mm
    python benchmarks/bench_detect.py --quick    # 150 x 256 x 256 at 2.0 x 1.4 x 1.4 mm

The scan is a phantom chest CT (``lung-nodule-det``, procedural) resampled to the size asked. Both
paths go from the scan in HU to candidates (centre in world mm, diameter, probability):

- baseline: resample the whole scan to the plan's spacing, normalise, MONAI
  ``sliding_window_inference`` in eager fp32, softmax, resample back, find candidates;
- medsight: ``DetectionTask.predict_volumes`` as ``medsight predict`` runs it: crop to the lung
  fields first, bf16 autocast where the CPU runs bf16 natively (``--precision auto``), else fp32.

Prints both times, the ratio, the share of the scan the lung crop keeps and each path's candidate
count. The network is untrained (the time of a pass does not depend on its weights); whether the
crop loses nodules is what the lung-box tests and the demo's FROC check.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention
from monai.inferers import sliding_window_inference

from medsight.core.geometry import Geometry
from medsight.core.hardware import cpu_class, native_bf16
from medsight.core.volume import Volume
from medsight.data.phantoms import make_phantom
from medsight.data.volume_cache import plan_normalization
from medsight.io import read
from medsight.models import ModelChoice
from medsight.models.predict import Autocast
from medsight.planning import case_facts, fingerprint, make_plan
from medsight.tasks import task_for
from medsight.tasks.detection import draw_balls, find_candidates
from medsight.transforms.volume3d import lung_box, preprocess_case, restore


def peak_gb() -> float:
    with open("/proc/self/status") as fh:
        line = next(line for line in fh if line.startswith("VmHWM"))
    return int(line.split()[1]) / 2**20


def chest_ct(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> Volume:
    """A phantom chest CT resampled to ``shape`` (HU, int16) over the same field of view."""
    with tempfile.TemporaryDirectory() as folder:
        make_phantom("lung-nodule-det", Path(folder), cases=1, seed=3)
        scan = read(next(Path(folder).glob("subset*/*.mhd")))
    hu = torch.from_numpy(np.asarray(scan.array, np.float32))[None]
    big = F.interpolate(hu, size=shape, mode="trilinear", align_corners=False)[0].numpy()
    return Volume(big.round().astype(np.int16), Geometry(spacing=spacing, origin=scan.geometry.origin))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="half the size along every axis")
    parser.add_argument("--memory-gb", type=float, default=8.0, help="the plan's training budget")
    parser.add_argument("--overlap", type=float, default=0.5)
    args = parser.parse_args()
    torch.manual_seed(0)
    shape, spacing = ((150, 256, 256), (2.0, 1.4, 1.4)) if args.quick else ((300, 512, 512), (1.0, 0.7, 0.7))
    scan = chest_ct(shape, spacing)
    image = np.asarray(scan.array)
    # the plan the recipe makes for such scans: their spacing and the nodules' intensities
    centres = scan.geometry.index_to_world(np.array([[shape[0] / 2, shape[1] / 2, shape[2] / 3]]))
    balls = draw_balls(scan.geometry, shape, centres, np.array([12.0]))
    facts = case_facts(scan, Volume(balls[None], scan.geometry))
    plan = make_plan(fingerprint([facts], modality="CT"), out_channels=2, memory_gb=args.memory_gb)
    plan = plan.model_copy(update={"crop_lungs": True})
    task = task_for({"kind": "detection"})
    model = task.network(ModelChoice(name="dynunet"), 1, plan).eval()
    box = lung_box(image, spacing)
    share = float(np.prod([b - a for a, b in box]) / np.prod(shape))
    print(f"CPU class: {cpu_class()}; scan {shape} at {spacing} mm -> plan spacing {plan.spacing}, patch "
          f"{plan.patch_size}, {plan.batch_size} windows per batch, overlap {args.overlap}, U-Net filters "
          f"{plan.network.filters}; the lung crop keeps {share:.0%} of the scan")  # fmt: skip

    started = time.perf_counter()
    case = preprocess_case(image.astype(np.float32), spacing, plan.spacing, crop="none",
                           normalization=plan_normalization(plan))  # fmt: skip
    with torch.no_grad():
        logits = sliding_window_inference(torch.from_numpy(case.image)[None], roi_size=plan.patch_size,
                                          sw_batch_size=plan.batch_size, predictor=model, overlap=args.overlap,
                                          mode="gaussian")[0]  # fmt: skip
    probability = restore(torch.softmax(logits, 0).numpy(), case, background=np.array([1.0, 0.0]))[1]
    baseline = find_candidates(probability, scan.geometry)
    baseline_s = time.perf_counter() - started

    ours_model = Autocast(model, torch.bfloat16) if native_bf16() else model
    started = time.perf_counter()
    rows, _ = task.predict_volumes(ours_model, [scan], plan)
    ours_s = time.perf_counter() - started

    print(f"baseline (whole scan, eager fp32, MONAI sliding windows): {baseline_s:.1f} s, "
          f"{len(baseline)} candidate(s)")  # fmt: skip
    print(f"medsight (lung crop, {'bf16' if native_bf16() else 'fp32'}): {ours_s:.1f} s, "
          f"{int(rows['candidates'].iloc[0])} candidate(s)")  # fmt: skip
    print(f"speed-up: {baseline_s / ours_s:.2f}x; peak RSS {peak_gb():.1f} GB")


if __name__ == "__main__":
    main()
