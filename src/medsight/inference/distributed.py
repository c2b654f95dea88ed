"""Batch prediction spread over a Ray cluster (the ``dist`` extra): the inputs of
``medsight predict --ray`` (files and folders, or a manifest's cases) are cut into shares, and
workers, each holding the model once, predict the shares side by side; the rows come back in the
order of the inputs, equal to what one process predicts.

The workers read the package and the inputs, and write label maps, by their paths: on a cluster of
several machines these must be on a file system every node sees (the package folder, the inputs
and ``--out``). Without an address a Ray of this machine is started for the run and stopped after.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from medsight.core.errors import ConfigError, InputError, MedsightError
from medsight.core.progress import Progress
from medsight.data.manifest import Manifest
from medsight.inference.predictor import Predictor
from medsight.inference.uncertainty import Uncertainty
from medsight.tasks.results import Prediction

__all__ = ["RayWorker", "predict_on_ray"]

log = logging.getLogger(__name__)


class RayWorker:
    """One Ray actor: the package loaded once, predicting the shares it is handed.

    Args:
        run_dir: The package (or run) folder, as every node sees it.
        precision: As :meth:`Predictor.from_run`.
        backend: As :meth:`Predictor.from_run`.
        threads: Torch threads (the CPUs Ray gave this worker).
    """

    def __init__(self, run_dir: str, precision: str, backend: str, threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.predictor = Predictor.from_run(run_dir, precision=precision, backend=backend)  # type: ignore[arg-type]

    def files(self, share: list[tuple[str, list[str]]] | list[str], options: dict[str, Any]) -> Prediction | Exception:
        """Predict a share of inputs: ``(input, its files)`` pairs, or table files for a model of
        tables. A medsight error comes back as the value (the driver raises it as it is)."""
        try:
            if self.predictor.task.spatial_dims == 0:
                return self.predictor.predict_files(list(share), uncertainty=options.get("uncertainty"))  # type: ignore[arg-type]
            groups = {Path(name): [Path(f) for f in files] for name, files in share}
            return self.predictor.predict_groups(groups, **options)
        except MedsightError as exc:
            return exc

    def cases(
        self, table: pd.DataFrame, root: str, info: dict[str, Any], options: dict[str, Any]
    ) -> Prediction | Exception:
        """Predict a share of a manifest's cases (prepared as in training, in a cache of its own: the
        shares preparing side by side must not share the manifest's)."""
        try:
            manifest = Manifest(table.reset_index(drop=True), root, info)
            with tempfile.TemporaryDirectory(prefix="medsight-share-") as cache:
                prepared = self.predictor.prepare(manifest, cache_dir=Path(cache) / "prepared")
                return self.predictor.predict_split(prepared, "all", uncertainty=options.get("uncertainty"))
        except MedsightError as exc:
            return exc


def _start(address: str | None, workers: int | None) -> tuple[Any, bool]:
    """Ray, connected (to ``address``, ``RAY_ADDRESS``, or a Ray of this machine started now); and
    whether this call started it (then it is stopped after the run)."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("--ray needs Ray: pip install 'medsight[dist]'") from exc
    if ray.is_initialized():
        return ray, False
    address = address or os.environ.get("RAY_ADDRESS") or None
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address is None:
        options["num_cpus"] = workers or os.cpu_count() or 1
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a Ray of this machine"
        raise ConfigError(f"cannot start or reach {where}: {str(exc).splitlines()[0] if str(exc) else exc}; "
                          "check --ray-address (ray status on the head node prints it)") from exc  # fmt: skip
    return ray, True


_KEPT: dict[tuple[Any, ...], list[Any]] = {}  # workers left running in a Ray this process did not start


def _workers(ray: Any, predictor: Predictor, count: int, cpus: int, *, keep: bool) -> list[Any]:
    """``count`` workers holding the predictor's package. In a Ray that outlives the call (started
    by the caller, or a cluster), they are kept for the next call with the same package: a worker's
    start (a process importing PyTorch and loading the model) costs seconds."""
    run_dir = str(Path(predictor.run_dir).resolve())
    stamp = (Path(run_dir) / "package.json").stat().st_mtime_ns  # a package exported again: new workers
    key = (ray.get_runtime_context().get_job_id(), run_dir, stamp, predictor.precision, predictor.backend, cpus)
    kept = _KEPT.get(key, []) if keep else []
    actor = ray.remote(num_cpus=cpus)(RayWorker)
    while len(kept) < count:
        kept.append(actor.remote(run_dir, predictor.precision, predictor.backend, cpus))
    if keep:
        _KEPT[key] = kept
    return kept[:count]


def _shares(items: Sequence[Any], workers: int) -> list[list[Any]]:
    """Items cut into shares: about four per worker (a slow share does not hold the others up), in order."""
    size = max(1, math.ceil(len(items) / (4 * workers)))
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def predict_on_ray(
    predictor: Predictor,
    *,
    inputs: Sequence[str | os.PathLike[str]] | None = None,
    manifest: Manifest | None = None,
    split: str = "all",
    address: str | None = None,
    workers: int | None = None,
    cpus_per_worker: int = 1,
    slice_index: int | None = None,
    masks: str | os.PathLike[str] | None = None,
    uncertainty: Uncertainty | None = None,
    progress: Progress | None = None,
    probabilities: bool = False,
) -> Prediction:
    """:meth:`Predictor.predict_files` (``inputs``; ``probabilities`` as there) or
    :meth:`Predictor.predict_split` (``manifest``, ``split``) spread over Ray workers, each with
    ``cpus_per_worker`` CPUs; ``workers`` defaults to as many as the cluster's CPUs hold. The rows
    come back in the order one process gives them.

    Raises:
        ConfigError: Ray is not installed or the cluster cannot be reached.
        InputError: an input cannot be read (named, as without Ray); nothing to predict.
    """
    if (inputs is None) == (manifest is None):
        raise ConfigError("give inputs or a manifest to predict on Ray (one of the two)")
    options: dict[str, Any] = {"uncertainty": uncertainty}
    names: dict[str, str] = {}  # the workers get absolute paths (their folder may differ); the rows keep the given
    if manifest is not None:
        table = manifest.table if split == "all" else manifest.table[manifest.table["split"] == split]
        if table.empty:
            raise InputError(f"the manifest has no {split!r} cases")
        items: list[Any] = [table.iloc[i : i + 1] for i in range(len(table))]
    elif predictor.task.spatial_dims == 0:
        names = {str(Path(p).resolve()): str(p) for p in inputs or []}
        items = list(names)
    else:
        groups = predictor.input_files(inputs or [])
        names = {str(name.resolve()): str(name) for name in groups}
        items = [(str(name.resolve()), [str(f.resolve()) for f in files]) for name, files in groups.items()]
        options.update(slice_index=slice_index, masks=None if masks is None else str(Path(masks).resolve()),
                       probabilities=probabilities)  # fmt: skip
    ray, started = _start(address, None if workers is None else workers * cpus_per_worker)
    try:
        count = workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // cpus_per_worker)
        count = min(count, len(items))
        pool = ray.util.ActorPool(_workers(ray, predictor, count, cpus_per_worker, keep=not started))
        shares = _shares(items, count)
        log.info("predicting %d input(s) in %d share(s) on %d Ray worker(s)", len(items), len(shares), count)
        if manifest is not None:
            root, info = str(manifest.root.resolve()), dict(manifest.info)
            results = pool.map(lambda w, s: w.cases.remote(pd.concat(s), root, info, options), shares)
        else:
            results = pool.map(lambda w, s: w.files.remote(s, options), shares)
        found: list[Prediction] = []
        done = 0
        for result, share in zip(results, shares, strict=True):
            if isinstance(result, Exception):
                raise result
            found.append(result)
            done += len(share)
            if progress is not None:
                progress("predicting on Ray", done, len(items))
    finally:
        if started:
            ray.shutdown()
    cases = pd.concat([p.cases for p in found], ignore_index=True)
    if names and "input" in cases:
        cases["input"] = [names.get(str(v), v) for v in cases["input"]]
    if "probabilities" in cases:  # "" where an input had none (a cine): as in one process
        cases["probabilities"] = cases["probabilities"].fillna("")
    return Prediction(cases, pd.concat([p.scores for p in found], ignore_index=True), predictor.provenance)
