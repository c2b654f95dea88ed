"""``medsight export``: a trained run as a model package another machine predicts with.

A package is a folder: ``package.json`` (the typed spec: task, network, preprocessing, label
schema, provenance), ``weights.pt`` (the weights alone, as a state_dict loaded weights-only:
nothing in a package is unpickled into code), with ``--format onnx`` also ``model.onnx`` (the
network, which the predictor runs on onnxruntime), the files prediction reads beside the weights
(plan, calibration temperatures, view fusion, the resolved recipe), the run's aggregate validation
figures (``metrics_<split>.json``), ``MODEL_CARD.md`` and ``export.json`` (versions, checksums, and
the check that the ONNX network computes what the PyTorch one does). The run's per-case predictions
and its report page (which shows test images) stay in the run: a package carries no patient data.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from medsight import __version__
from medsight.core.errors import ConfigError, InputError, MedsightError
from medsight.inference import Predictor
from medsight.io.atomic import atomic_dir, file_sha256
from medsight.tasks import ModelPackage

__all__ = ["ExportedPackage", "export_network", "export_package"]

log = logging.getLogger(__name__)

Format = Literal["onnx", "torch"]
WEIGHTS_FILE = "weights.pt"
ONNX_FILE = "model.onnx"
# what prediction reads from a run beside its weights, and its aggregate validation figures
_CARRIED = ("plan.json", "config.json", "environment.json", "temperatures.json", "fusion.json", "metrics_test.json",
            "metrics_val.json")  # fmt: skip
_OPSET = 17
_TOLERANCE = 1e-3  # largest difference allowed between the ONNX and PyTorch outputs, relative to their scale


@dataclass(frozen=True)
class ExportedPackage:
    """What :func:`export_package` wrote."""

    folder: Path
    format: str
    files: tuple[str, ...]
    max_difference: float | None  # ONNX against PyTorch on the check inputs (None without ONNX)
    seconds: float


def export_network(
    model: nn.Module, example: torch.Tensor, path: str | os.PathLike[str], *, opset: int = _OPSET
) -> Path:
    """Write ``model`` (evaluation mode, fp32) as ONNX to ``path``, traced on ``example`` (batch
    first); the batch axis stays free, every other axis is the example's.

    Raises:
        ConfigError: the ``onnx`` package is missing (``pip install 'medsight[export]'``).
        MedsightError: the network holds an operation the exporter cannot write.
    """
    try:
        import onnx  # noqa: F401 - the exporter writes through it
    except ImportError as exc:
        raise ConfigError("exporting to ONNX needs the onnx package: pip install 'medsight[export]'") from exc
    import warnings

    path = Path(path)
    model = model.eval().float()
    axes = {"input": {0: "batch"}, "output": {0: "batch"}}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on Python control flow and constants
            torch.onnx.export(model, (example.float(),), str(path), input_names=["input"], output_names=["output"],
                              dynamic_axes=axes, opset_version=opset, dynamo=False)  # fmt: skip
    except Exception as exc:  # the exporter raises many types for operations it cannot write
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MedsightError(f"the network could not be written as ONNX ({type(exc).__name__}: {first}); "
                            "export it with --format torch") from exc  # fmt: skip
    return path


def _parity(model: nn.Module, onnx_path: Path, example: torch.Tensor) -> float:
    """The largest difference between the PyTorch and ONNX outputs on two random inputs shaped like
    ``example`` (a batch of two: the free batch axis is exercised), relative to the outputs' scale.

    Raises:
        MedsightError: it exceeds the tolerance (the ONNX network would predict otherwise).
    """
    from medsight.inference.onnx import OnnxNetwork

    generator = torch.Generator().manual_seed(0)
    inputs = torch.rand((2, *example.shape[1:]), generator=generator)
    with torch.no_grad():
        expected = model(inputs).float()
    got = OnnxNetwork(onnx_path)(inputs)
    if got.shape != expected.shape:
        raise MedsightError(f"the ONNX network outputs {list(got.shape)} where PyTorch outputs "
                            f"{list(expected.shape)}; export it with --format torch")  # fmt: skip
    scale = max(1.0, float(expected.abs().max()))
    difference = float((got - expected).abs().max()) / scale
    if not np.isfinite(difference) or difference > _TOLERANCE:
        raise MedsightError(f"the ONNX network's outputs differ from PyTorch's by {difference:.2g} (relative; "
                            f"allowed {_TOLERANCE:g}); export it with --format torch")  # fmt: skip
    return difference


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {"medsight": __version__}
    for name in ("torch", "monai", "onnx", "onnxruntime"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def _figures(metrics: dict[str, Any]) -> list[str]:
    rows = []
    for name, value in (metrics.get("figures") or {}).items():
        if not isinstance(value, dict) or value.get("estimate") is None:
            continue
        low, high = value.get("low"), value.get("high")
        interval = f"[{low:.3f}, {high:.3f}]" if low is not None and high is not None else "-"
        rows.append(f"| {name} | {value['estimate']:.3f} | {interval} |")
    return rows


def model_card(package: ModelPackage, metrics: dict[str, Any] | None, export: dict[str, Any]) -> str:
    """The package's model card (Markdown): what the model does, on what input, how it was trained
    and validated, and its files."""
    task = package.task.model_dump(exclude_defaults=True) if hasattr(package.task, "model_dump") else package.task
    provenance = package.provenance
    lines = [
        f"# Model card: {package.recipe}",
        "",
        "Made by `medsight export`. For research: not a medical device. Its figures hold for data like",
        "the validation data below; check it on your own scanners and patients before relying on it.",
        "",
        "## Model",
        f"- task: `{json.dumps(task, default=str)}`",
        f"- network: `{package.model.name}`, {package.in_channels} input channel(s)",
        f"- preprocessing: `{json.dumps(package.preprocess, default=str)[:2000]}`",
        "",
        "## Training",
        f"- created: {provenance.created or 'not recorded'}; seed {provenance.seed}",
        f"- data: manifest `{provenance.manifest or 'not recorded'}`, hash `{provenance.data_hash or 'not recorded'}`",
        f"- code: medsight git commit `{provenance.git_commit or 'not recorded'}`; versions "
        f"`{json.dumps(provenance.versions, default=str)}`",
        "",
        "## Validation",
    ]
    rows = _figures(metrics or {})
    if metrics and rows:
        lines += [
            f"On the run's {metrics.get('split', 'test')} split: {metrics.get('cases')} cases, "
            f"{metrics.get('patients')} patients; 95 % intervals from {metrics.get('bootstrap_resamples')} "
            "bootstrap resamples of patients.",
            "",
            "| figure | estimate | 95 % CI |",
            "|---|---|---|",
            *rows,
        ]
        lines += [f"- warning: {w}" for w in metrics.get("warnings") or []]
    else:
        lines.append("The run was not evaluated (`medsight evaluate RUN`); nothing is known of its accuracy.")
    lines += [
        "",
        "## Files",
        f"- `{WEIGHTS_FILE}`: the weights (a state_dict, loaded weights-only), "
        f"sha256 `{export['files'][WEIGHTS_FILE]}`",
    ]
    if ONNX_FILE in export["files"]:
        lines.append(
            f"- `{ONNX_FILE}`: the network as ONNX (opset {export['opset']}), sha256 `{export['files'][ONNX_FILE]}`; "
            f"its outputs differ from PyTorch's by at most {export['parity']['max_difference']:.2g} (relative) "
            "on the export's check inputs"
        )
    return "\n".join(lines) + "\n"


def export_package(
    run: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    format: Format = "onnx",
    weights: str | None = None,
    overwrite: bool = False,
) -> ExportedPackage:
    """Write ``run`` (a training run, or a package) as a model package in ``out`` (atomically: all
    or nothing). ``format``: ``onnx`` adds the network as ONNX, checked against PyTorch on random
    inputs before anything is written; ``torch``: the weights alone. ``weights``: ``last`` takes
    ``last.pt`` instead of the best epoch's.

    Raises:
        InputError: ``run`` is no run or package, its weights are unreadable, or ``out`` is the run
            (or holds it), or is a non-empty folder without ``overwrite``.
        ConfigError: ONNX asked for without the ``export`` extra, or for a task that cannot be exported.
        MedsightError: the ONNX network could not be written, or would predict otherwise than PyTorch.
    """
    started = time.perf_counter()
    run, out = Path(run), Path(out)
    if format not in ("onnx", "torch"):
        raise ConfigError(f"format must be onnx or torch, got {format!r}")
    if out.resolve() == run.resolve() or out.resolve() in run.resolve().parents:
        raise InputError(f"--out {out} is the run folder or holds it; choose a new folder for the package")
    predictor = Predictor.from_run(run, weights=weights, precision="fp32", backend="torch")
    model, package = predictor.model, predictor.package
    example = (
        package.task_object().example_input(predictor.preprocess, package.in_channels) if format == "onnx" else None
    )
    metrics = None
    if (run / "metrics_test.json").is_file():
        try:
            metrics = json.loads((run / "metrics_test.json").read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{run / 'metrics_test.json'} is unreadable ({exc}); evaluate the run again") from exc
    with atomic_dir(out, overwrite=overwrite) as tmp:
        torch.save({"model": model.state_dict()}, tmp / WEIGHTS_FILE)
        difference = None
        if example is not None:
            export_network(model, example, tmp / ONNX_FILE)
            difference = _parity(model, tmp / ONNX_FILE, example)
            log.info("ONNX network written and checked: outputs within %.2g of PyTorch's", difference)
        carried = [name for name in _CARRIED if (run / name).is_file()]
        for name in carried:
            shutil.copy2(run / name, tmp / name)
        package.model_copy(update={"weights": WEIGHTS_FILE, "onnx": ONNX_FILE if example is not None else None}).save(
            tmp
        )
        files = {name: file_sha256(tmp / name) for name in (WEIGHTS_FILE, ONNX_FILE) if (tmp / name).is_file()}
        facts: dict[str, Any] = {
            "format": format, "exported_from": str(run.resolve()), "weights": weights or "best",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "versions": _versions(),
            "files": files,
        }  # fmt: skip
        if example is not None:
            facts.update(opset=_OPSET, input_shape=["batch", *example.shape[1:]],
                         parity={"max_difference": difference, "tolerance": _TOLERANCE, "inputs": 2})  # fmt: skip
        (tmp / "export.json").write_text(json.dumps(facts, indent=2))
        (tmp / "MODEL_CARD.md").write_text(model_card(package, metrics, facts))
        written = tuple(sorted(p.name for p in tmp.iterdir()))
    seconds = time.perf_counter() - started
    log.info("exported %s to %s (%s) in %.1f s", run, out, format, seconds)
    return ExportedPackage(out, format, written, difference, seconds)
