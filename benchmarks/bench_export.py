"""The exported network on onnxruntime against PyTorch eager fp32 and PyTorch in the predictor's
fastest mode, same network, weights and inputs, same process: a 2D classifier and a 3D segmenter.

    python benchmarks/bench_export.py                 # ResNet-18 at 224 px; BraTS-plan DynUNet window
    python benchmarks/bench_export.py --size 128 --repeats 5

For each network: latency (one input) and throughput (a batch: 32 images, or the plan's windows
per batch), median of ``--repeats`` alternating runs after a warm-up, and each figure's ratio to
onnxruntime's (above 1: onnxruntime is faster). "channels-last" is PyTorch with channels-last
memory (what training picks on most CPUs); "bf16" is under bf16 autocast too, run only where the
CPU has native bf16. ``medsight predict`` on a run uses eager fp32 for 2D models and bf16 for 3D
ones where the CPU has it; on a package with an ONNX network, onnxruntime for 2D ones.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medsight.core.geometry import Geometry
from medsight.core.hardware import cpu_class, native_bf16
from medsight.core.volume import Volume
from medsight.engine.tuning import channels_last
from medsight.export import export_network
from medsight.inference.onnx import OnnxNetwork
from medsight.models import ModelChoice
from medsight.planning import case_facts, fingerprint, make_plan
from medsight.tasks import task_for
from medsight.transforms.image2d import Preprocess2D


class _ChannelsLast(nn.Module):
    """The network in channels-last memory, fp32 or under bf16 autocast."""

    def __init__(self, model: nn.Module, bf16: bool) -> None:
        super().__init__()
        self.model, self.bf16 = channels_last(copy.deepcopy(model)), bf16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            return self.model(channels_last(x)).float()


def compare(name: str, model: nn.Module, example: torch.Tensor, batch: int, repeats: int) -> None:
    """Export ``model``, then time each way of running it on one input and on a batch."""
    model = model.eval()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        started = time.perf_counter()
        export_network(model, example, path)
        exported = time.perf_counter() - started
        ways: dict[str, nn.Module] = {"onnxruntime fp32": OnnxNetwork(path), "torch eager fp32": model,
                                      "torch fp32 channels-last": _ChannelsLast(model, bf16=False)}  # fmt: skip
        if native_bf16():
            ways["torch bf16 channels-last"] = _ChannelsLast(model, bf16=True)
        shapes = {"latency (1)": example, f"throughput ({batch})": example.expand(batch, *example.shape[1:]).clone()}
        print(f"\n{name}: input {list(example.shape[1:])}, exported in {exported:.1f} s")
        for label, inputs in shapes.items():
            times: dict[str, list[float]] = {way: [] for way in ways}
            with torch.inference_mode():
                for network in ways.values():
                    network(inputs)  # warm-up
                for _ in range(repeats):  # alternating, so drift on the machine hits every way alike
                    for way, network in ways.items():
                        started = time.perf_counter()
                        network(inputs)
                        times[way].append(time.perf_counter() - started)
            onnx = statistics.median(times["onnxruntime fp32"])
            for way in ways:
                seconds = statistics.median(times[way])
                rate = inputs.shape[0] / seconds
                print(f"  {label:18s} {way:26s} {seconds * 1000:8.1f} ms  {rate:7.1f} /s  "
                      f"onnxruntime {seconds / onnx:4.2f}x faster")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="2D input side (pixels)")
    parser.add_argument("--batch", type=int, default=32, help="2D images per throughput batch")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--base-filters", type=int, default=32, help="3D U-Net's first filters (nnU-Net: 32)")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"CPU class: {cpu_class()}; {torch.get_num_threads()} threads")

    classifier = task_for({"kind": "ordinal", "classes": ["0", "1", "2", "3", "4"]})
    preprocess = Preprocess2D(size=args.size, channels=3)
    model = classifier.network(ModelChoice(name="resnet18"), 3, preprocess)
    compare(
        "2D classifier (ResNet-18, DR grading)",
        model,
        classifier.example_input(preprocess, 3),
        args.batch,
        args.repeats,
    )

    shape = (78, 120, 120)  # a BraTS-like head at half size: the plan's window does not depend on it much
    rng = np.random.default_rng(0)
    image = rng.normal(0, 1, (4, *shape)).astype(np.float32)
    label = np.zeros((1, *shape), np.uint8)
    label[0, 30:50, 40:80, 40:80] = 1
    facts = case_facts(Volume(image, Geometry()), Volume(label, Geometry()))
    plan = make_plan(fingerprint([facts], modality="MR"), out_channels=2, memory_gb=8.0, base_filters=args.base_filters)
    segmenter = task_for({"kind": "segmentation", "labels": {"tumour": 1}})
    model = segmenter.network(ModelChoice(name="dynunet"), 4, plan)
    compare(f"3D segmenter (DynUNet, filters {plan.network.filters})", model, segmenter.example_input(plan, 4),
            plan.batch_size, max(3, args.repeats // 2))  # fmt: skip


if __name__ == "__main__":
    main()
