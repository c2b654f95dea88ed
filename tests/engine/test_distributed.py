"""Two CPU processes (gloo): weights stay identical across ranks, and validation metrics are
computed on predictions gathered from every rank, not averaged per rank."""

from __future__ import annotations

import gc
import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from medsight.engine import TrainConfig, gather, train
from tests.engine.test_loop import _loss, _model, _problem


def _worker(rank: int, world: int, folder: str, batch_norm: bool = False) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world)
    try:
        data = _problem(n=64)
        x_val, y_val = _problem(n=30, seed=5).tensors
        shard = slice(rank, None, world)  # each rank scores only its shard of the validation set

        buffers_agree = []

        def validate(model):
            if batch_norm:  # the model each rank scores must be the one rank 0 saves
                flat = torch.cat([b.detach().float().reshape(-1) for b in model.buffers()])
                parts = [torch.zeros_like(flat) for _ in range(world)]
                dist.all_gather(parts, flat)
                buffers_agree.append(all(torch.equal(parts[0], p) for p in parts))
            logits = gather(model(x_val[shard]).reshape(-1))
            labels = gather(y_val[shard])
            return {"accuracy": float(((logits > 0).float() == labels).float().mean()), "n": float(len(labels))}

        model = _model(seed=rank)  # different starting weights: DDP broadcasts rank 0's
        if batch_norm:  # running statistics that each rank's own batches update
            model = torch.nn.Sequential(model[0], torch.nn.BatchNorm1d(16), *model[1:])
        config = TrainConfig(epochs=2, batch_size=8, lr=0.05, precision="fp32")
        train(model, _loss, data, config=config, run_dir=f"{folder}/run", validate=validate)
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        parts = [torch.zeros_like(flat) for _ in range(world)]
        dist.all_gather(parts, flat)
        model.eval()
        full = model(x_val).reshape(-1)
        accuracy = float(((full > 0).float() == y_val).float().mean())
        with open(f"{folder}/rank{rank}.json", "w") as fh:
            json.dump({"same": all(torch.equal(parts[0], p) for p in parts), "accuracy": accuracy,
                       "buffers_agree": buffers_agree}, fh)  # fmt: skip
    finally:
        dist.barrier()  # no rank tears gloo down while another still talks to it
        gc.collect()
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_train_one_model(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["same"] for r in results)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]  # rank 0 alone wrote the run folder
    assert lines[-1]["val_n"] == 30.0  # every rank's shard was gathered
    assert lines[-1]["val_accuracy"] == pytest.approx(results[0]["accuracy"])


@pytest.mark.slow
def test_ranks_validate_with_rank_0s_batch_norm_statistics(tmp_path):
    """Each rank's training forward updates BatchNorm statistics from its own batches; without
    a broadcast before validation, the shards are scored by models that differ from the saved one."""
    mp.spawn(_worker, args=(2, str(tmp_path), True), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert results[0]["buffers_agree"] == [True, True]
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["val_accuracy"] == pytest.approx(results[0]["accuracy"])


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    from medsight.core import ConfigError
    from medsight.engine import process_group

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="at most 1 processes per machine"), process_group("auto"):
        pass
