"""Does ``torch.compile`` (inductor, CPU) pay for the demo's training and scoring here?

The same network, batches, optimizer and loss, trained eagerly and compiled, in fp32 with the
layout the engine chooses (channels-last); then inference (``no_grad``) at the scoring batch size.
Printed: the compile cost (seconds of the first steps beyond eager's), steady images/s of each,
their ratio, and how many steps a run needs before compiling saves time (the lean demo's 2D steps
train ~120-380 steps each: DR 400 x 0.72 x 14 / 32, CXR 1,200 x 0.72 x 14 / 32, mammography
768 x 10 / 64).

    python benchmarks/bench_compile.py [--model resnet10] [--size 96] [--channels 1] [--steps 20]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from medsight.engine.tuning import channels_last, cpu_class
from medsight.models import build_model


def _timed(step, batches: int) -> list[float]:
    times = []
    for _ in range(batches):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def _trainer(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()

    return step


def _scorer(model: nn.Module, x: torch.Tensor):
    def step() -> None:
        with torch.no_grad():
            model(x)

    return step


def measure(build, x: torch.Tensor, y: torch.Tensor, steps: int, *, train: bool) -> dict[str, float]:
    """Eager and compiled: seconds of the first two steps (compiling) and steady images/s (median of ``steps``)."""
    figures = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = channels_last(build())
        model.train(train)
        if compiled:
            model = torch.compile(model)
        step = _trainer(model, x, y) if train else _scorer(model, x)
        first = _timed(step, 2)  # compiling (forward and backward graphs) happens here
        steady = sorted(_timed(step, steps))[steps // 2]
        key = "compiled" if compiled else "eager"
        figures[f"{key} first"] = sum(first)
        figures[f"{key} img/s"] = len(x) / steady
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet10")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--outputs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed steps after the first two")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)

    def build() -> nn.Module:
        return build_model(args.model, in_channels=args.channels, num_outputs=args.outputs)

    header = f"[{cpu_class()}, {torch.get_num_threads()} threads, {args.model} {args.channels}x{args.size}x{args.size}]"
    for train, batch in ((True, args.batch_size), (False, 64)):  # 64: run_model's scoring batch
        x = channels_last(torch.rand(batch, args.channels, args.size, args.size, generator=generator))
        y = torch.randint(0, 2, (batch, args.outputs), generator=generator).float()
        f = measure(build, x, y, args.steps, train=train)
        ratio = f["compiled img/s"] / f["eager img/s"]
        cost = f["compiled first"] - f["eager first"]
        saved = batch / f["eager img/s"] - batch / f["compiled img/s"]  # seconds a steady step saves
        even = f"pays after ~{cost / saved:.0f} steps" if saved > 0 else "never pays"
        print(f"RESULT {header} {'training' if train else 'inference'} batch {batch}: eager "
              f"{f['eager img/s']:.1f} img/s, compiled {f['compiled img/s']:.1f} img/s, "
              f"compiled/eager {ratio:.2f}; compiling costs {cost:.1f} s, {even}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
