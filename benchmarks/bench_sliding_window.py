"""Sliding-window inference over a BraTS-size volume: medsight's predictor path against MONAI's
``sliding_window_inference`` in eager fp32, same network, weights, ROI and overlap, same process.

    python benchmarks/bench_sliding_window.py              # 4 x 155 x 240 x 240, plan for 8 GB
    python benchmarks/bench_sliding_window.py --quick      # 4 x 78 x 120 x 120

Prints both times, the ratio, the Dice between the two label maps and the process's peak RSS.
medsight runs the network under bf16 autocast where the CPU runs bf16 natively (what
``medsight predict``'s ``--precision auto`` picks for a 3D model trained in bf16), else fp32.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from medsight.core.geometry import Geometry
from medsight.core.hardware import cpu_class, native_bf16
from medsight.core.volume import Volume
from medsight.metrics.segmentation import dice
from medsight.models import ModelChoice
from medsight.models.predict import Autocast
from medsight.planning import case_facts, fingerprint, make_plan
from medsight.tasks import task_for
from medsight.tasks.segmentation import sliding_window

BRATS = {"kind": "segmentation", "labels": {"NCR": 1, "ED": 2, "ET": 4},
         "regions": {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}}  # fmt: skip


def peak_gb() -> float:
    with open("/proc/self/status") as fh:
        line = next(line for line in fh if line.startswith("VmHWM"))
    return int(line.split()[1]) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="half the size along every axis")
    parser.add_argument("--memory-gb", type=float, default=8.0, help="the plan's training budget")
    parser.add_argument("--base-filters", type=int, default=16)
    parser.add_argument("--overlap", type=float, default=0.5)
    args = parser.parse_args()
    torch.manual_seed(0)
    shape = (78, 120, 120) if args.quick else (155, 240, 240)
    rng = np.random.default_rng(0)
    # a head-like volume: a smooth ball of tissue with a brighter lesion, four contrasts, z-scored
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    head = ((z - shape[0] / 2) / (shape[0] / 2.3)) ** 2 + ((y - shape[1] / 2) / (shape[1] / 2.3)) ** 2 + (
        (x - shape[2] / 2) / (shape[2] / 2.6)
    ) ** 2 < 1
    lesion = ((z - shape[0] / 2) ** 2 + (y - shape[1] / 3) ** 2 + (x - shape[2] / 2) ** 2) < (shape[1] / 10) ** 2
    image = np.stack([head * (1 + 0.5 * lesion * k) + rng.normal(0, 0.1, shape) for k in range(4)]).astype(np.float32)
    label = (lesion * 2).astype(np.uint8)[None]
    facts = case_facts(Volume(image, Geometry()), Volume(label, Geometry()))
    plan = make_plan(fingerprint([facts], modality="MR"), out_channels=3, memory_gb=args.memory_gb,
                     base_filters=args.base_filters)  # fmt: skip
    task = task_for(BRATS)
    model = task.network(ModelChoice(name="dynunet"), 4, plan).eval()
    inputs = torch.from_numpy(image)[None]
    print(f"CPU class: {cpu_class()}; volume {image.shape}, patch {plan.patch_size}, {plan.batch_size} windows "
          f"per batch, overlap {args.overlap}, U-Net filters {plan.network.filters}")  # fmt: skip

    started = time.perf_counter()
    with torch.no_grad():
        baseline = sliding_window_inference(inputs, roi_size=plan.patch_size, sw_batch_size=plan.batch_size,
                                            predictor=model, overlap=args.overlap, mode="gaussian")[0]  # fmt: skip
    monai_s = time.perf_counter() - started

    ours_model = Autocast(model, torch.bfloat16) if native_bf16() else model
    started = time.perf_counter()
    ours = sliding_window(ours_model, image, plan, overlap=args.overlap)
    ours_s = time.perf_counter() - started

    agreement = [dice((ours[k] > 0).numpy(), (baseline[k] > 0).numpy()) for k in range(len(ours))]
    print(f"MONAI sliding_window_inference, eager fp32: {monai_s:.1f} s")
    print(f"medsight ({'bf16' if native_bf16() else 'fp32'}):                     {ours_s:.1f} s")
    print(
        f"ratio {monai_s / ours_s:.2f}x; Dice between the outputs per region {', '.join(f'{a:.4f}' for a in agreement)}"
    )
    print(f"peak RSS of the process {peak_gb():.2f} GB (plan budget {args.memory_gb:g} GB for training)")


if __name__ == "__main__":
    main()
