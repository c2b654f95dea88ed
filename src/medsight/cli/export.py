"""``medsight export``: a trained run as a portable model package."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medsight.cli.common import friendly, out

# torch and the export machinery are imported inside the command: `--help` stays instant


def export_command(
    run: Annotated[Path, typer.Argument(help="Run folder of `medsight train` (or a package to export again).")],
    output: Annotated[Path, typer.Option("--out", "-o", help="The package folder to write.")],
    format: Annotated[
        str, typer.Option("--format", help="onnx (the network as ONNX too, for onnxruntime) or torch (weights only).")
    ] = "onnx",
    weights: Annotated[
        str, typer.Option("--weights", help="best (the best validation epoch's weights) or last.")
    ] = "best",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --out folder.")] = False,
) -> None:
    """Write a model package: the typed spec, the weights (a state_dict; nothing is unpickled), with
    --format onnx the network as ONNX checked against PyTorch, the files prediction reads, the run's
    validation figures and a model card. `medsight predict PACKAGE ...` then predicts with it, on
    onnxruntime for 2D and table models (--backend). The run's per-case predictions and report page
    (which show patients' images) are not copied."""
    from medsight.core.errors import ConfigError
    from medsight.export import export_package

    if format not in ("onnx", "torch"):
        raise ConfigError(f"--format must be onnx or torch, got {format!r}")
    if weights not in ("best", "last"):
        raise ConfigError(f"--weights must be best or last, got {weights!r}")
    done = export_package(run, output, format=format, weights=None if weights == "best" else "last",  # type: ignore[arg-type]
                          overwrite=overwrite)  # fmt: skip
    out.print(f"wrote the {done.format} package {done.folder} in {done.seconds:.1f} s: {', '.join(done.files)}")
    if done.max_difference is not None:
        out.print(f"the ONNX network's outputs are within {done.max_difference:.1g} of PyTorch's (relative)")


def register(app: typer.Typer) -> None:
    """Add the command to the main app."""
    app.command("export")(friendly(export_command))
