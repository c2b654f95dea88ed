"""Training throughput: medsight's engine vs a plain PyTorch loop on the same model and batches.

Both loops train a ResNet-18 on the same cached phantom fundus images with the same batch
augmentation (same dataset object, batch size, optimizer, loss and numeric mode). Printed:
images/s of each and their ratio (target >= 0.95), the share of step time the engine spent
waiting for data (target <= 10 %) and augmenting, the same for per-image MONAI augmentation
in the DataLoader, and fp32 vs the engine's default numeric mode (speed, and validation
metrics after the same number of epochs for a few seeds, to set the change against the
seed-to-seed spread).

    python benchmarks/bench_train2d.py [--cases 400] [--size 128] [--epochs 3] [--accuracy-epochs 15]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from medsight.data import build_manifest
from medsight.data.cache import build_image_cache
from medsight.data.dataset import ImageDataset
from medsight.data.phantoms import make_phantom
from medsight.data.splits import assign_splits
from medsight.engine import TrainConfig, train
from medsight.engine.tuning import choose_mode, cpu_class, first_batch
from medsight.models import build_model
from medsight.models.predict import run_model
from medsight.tasks import ClassificationTask
from medsight.transforms.batch2d import BatchAugmenter
from medsight.transforms.image2d import Augment2D, Preprocess2D, build_augmentation

TASK = ClassificationTask("ordinal", ("0", "1", "2", "3", "4"), referable_grade=2)


def plain_loop(model, data, *, epochs, batch_size, lr, amp_dtype, channels_last, augment=None):
    """The loop a user would write by hand: AdamW, autocast, backward, step."""
    torch.manual_seed(0)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))  # fmt: skip
    seen, start = 0, time.perf_counter()
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            if augment is not None:
                with torch.no_grad():
                    x = augment(x)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=amp_dtype) if amp_dtype else nullcontext():
                logits = model(x)
            loss = TASK.loss(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(x)
    return seen / (time.perf_counter() - start)


def engine_run(model, data, folder, *, epochs, batch_size, lr, precision, validate=None, augment=None):
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, precision=precision, clip_grad_norm=None,
                         warmup_epochs=0, schedule="constant")  # fmt: skip
    train(model, TASK.loss, data, config=config, run_dir=folder, validate=validate,
          augment_batch=augment.with_targets if augment is not None else None)  # fmt: skip
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=400)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the speed runs")
    parser.add_argument("--accuracy-epochs", type=int, default=15, help="epochs of the fp32 vs default runs")
    parser.add_argument("--seeds", type=int, default=2, help="seeds of the fp32 vs default runs")
    parser.add_argument("--rounds", type=int, default=2, help="alternating plain/engine speed rounds")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest = assign_splits(build_manifest(make_phantom("dr-grading", tmp / "aptos", cases=args.cases, seed=0)),
                                 stratify="target", seed=0)  # fmt: skip
        cache = build_image_cache(manifest, Preprocess2D(size=args.size), tmp / "cache")
        targets = manifest.table["target"].to_numpy(np.float32)
        train_idx = np.flatnonzero(manifest.table["split"] == "train")
        val_idx = np.flatnonzero(manifest.table["split"] != "train")
        data = ImageDataset(cache, targets, train_idx)  # augmented per batch by both loops
        augment = BatchAugmenter(Augment2D())
        per_item = ImageDataset(cache, targets, train_idx, build_augmentation(Augment2D(), seed=0))
        val = ImageDataset(cache, targets, val_idx)
        # the engine's measured choice (cached per machine); the plain loop runs in the same mode
        chosen = choose_mode("auto", "auto", torch.device("cpu"), model=build_model("resnet18", num_outputs=4),
                             batch=first_batch(data, args.batch_size), loss_fn=TASK.loss)  # fmt: skip
        default, mode = chosen.amp_dtype, chosen.label
        print(
            f"CPU class {cpu_class()}, {torch.get_num_threads()} threads; {len(train_idx)} training images of "
            f"{args.size} px, batch {args.batch_size}, {args.epochs} epochs; numeric mode: {mode} ({chosen.reason})"
        )

        lr = 1e-3
        plains, engines, records = [], [], []
        for round_ in range(args.rounds):  # alternate the two loops so drift on the machine hits both
            torch.manual_seed(0)
            plains.append(plain_loop(build_model("resnet18", num_outputs=4), data, epochs=args.epochs,
                                     batch_size=args.batch_size, lr=lr, amp_dtype=default,
                                     channels_last=chosen.channels_last, augment=augment))  # fmt: skip
            torch.manual_seed(0)
            recs = engine_run(build_model("resnet18", num_outputs=4), data, tmp / f"engine{round_}", epochs=args.epochs,
                              batch_size=args.batch_size, lr=lr, precision="auto", augment=augment)  # fmt: skip
            engines.append(len(data) * len(recs) / sum(r["seconds"] for r in recs))  # like the plain loop: all epochs
            records += recs
        plain, engine = float(np.mean(plains)), float(np.mean(engines))
        wait = float(np.mean([r["data_wait_share"] for r in records]))
        aug_share = float(np.mean([r["augment_share"] for r in records]))
        print(f"plain PyTorch loop: {plain:.1f} img/s; medsight engine: {engine:.1f} img/s; "
              f"ratio {engine / plain:.2f} (target >= 0.95; rounds: "
              f"{', '.join(f'{e / p:.2f}' for e, p in zip(engines, plains, strict=True))})")  # fmt: skip
        print(f"engine time waiting for data: {wait:.1%} of each epoch (target <= 10 %); "
              f"batch augmentation: {aug_share:.1%}")  # fmt: skip
        torch.manual_seed(0)
        item_records = engine_run(build_model("resnet18", num_outputs=4), per_item, tmp / "item", epochs=args.epochs,
                                  batch_size=args.batch_size, lr=lr, precision="auto")  # fmt: skip
        item_speed = len(data) * len(item_records) / sum(r["seconds"] for r in item_records)
        item_wait = float(np.mean([r["data_wait_share"] for r in item_records]))
        print(f"per-image MONAI augmentation in the DataLoader instead: {item_speed:.1f} img/s, "
              f"waiting for data {item_wait:.1%}")  # fmt: skip

        summary = (f"RESULT [{cpu_class()}, {mode}] engine/plain {engine / plain:.2f}; data wait {wait:.1%} "
                   f"(per-image MONAI {item_wait:.1%}); "
                   f"batch vs per-image speed {engine / item_speed:.2f}x")  # fmt: skip
        if args.seeds:
            summary += "; " + accuracy(args, data, val, targets[val_idx], augment, tmp, mode)
        print(summary)


def accuracy(args, data, val, val_targets, augment, tmp, mode) -> str:
    """fp32 vs the default numeric mode: speed and validation metrics, a few seeds each."""
    y_val = torch.from_numpy(val_targets)

    def validate(model):
        return TASK.score(run_model(model, val, batch_size=64), y_val)

    results: dict[str, list] = {"fp32": [], "auto": []}
    for seed in range(args.seeds):
        for precision in ("fp32", "auto"):
            torch.manual_seed(seed)
            recs = engine_run(build_model("resnet18", num_outputs=4), data, tmp / f"acc_{precision}_{seed}",
                              epochs=args.accuracy_epochs, batch_size=args.batch_size, lr=1e-3, precision=precision,
                              validate=validate, augment=augment)  # fmt: skip
            results[precision].append((len(data) * len(recs) / sum(r["seconds"] for r in recs), recs[-1]))
    speed = {k: float(np.mean([r[0] for r in v])) for k, v in results.items()}
    for precision, label in (("fp32", "fp32"), ("auto", mode)):
        figures = ", ".join(f"seed {i}: QWK {r['val_qwk']:.3f} referable AUC {r['val_referable_auc']:.3f}"
                            for i, (_, r) in enumerate(results[precision]))  # fmt: skip
        print(f"{label}: {speed[precision]:.1f} img/s; after {args.accuracy_epochs} epochs {figures}")
    changes = {}
    for name in ("val_qwk", "val_referable_auc"):
        pairs = zip(results["auto"], results["fp32"], strict=True)
        changes[name] = (float(np.mean([a[1][name] - f[1][name] for a, f in pairs])),
                         float(np.std([f[1][name] for f in results["fp32"]])))  # fmt: skip
    return (f"default/fp32 speed {speed['auto'] / speed['fp32']:.2f}x; QWK change {changes['val_qwk'][0]:+.3f} "
            f"(fp32 seed-to-seed sd {changes['val_qwk'][1]:.3f}); referable AUC change "
            f"{changes['val_referable_auc'][0]:+.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
