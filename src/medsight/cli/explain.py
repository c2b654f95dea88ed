"""``medsight explain``: where a run's model saw what it reports, with checks of the maps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from medsight.cli.common import err, friendly, out, progress_bar
from medsight.core.errors import ConfigError, InputError

_METHODS = ("gradcam", "gradcampp", "occlusion", "ig")  # medsight.explain.METHODS, without importing torch


def explain_command(
    run: Annotated[Path, typer.Argument(help="Run folder of `medsight train`.")],
    inputs: Annotated[
        list[Path] | None, typer.Argument(help="Image files or folders (or use --data for a manifest split).")
    ] = None,
    method: Annotated[
        list[str] | None,
        typer.Option("--method", "-m", help=f"Attribution method, repeatable: {', '.join(_METHODS)}. Default gradcam."),
    ] = None,
    target: Annotated[
        str | None, typer.Option("--target", "-t", help="Class or finding to explain (default: the most probable).")
    ] = None,
    output: Annotated[Path | None, typer.Option("--out", "-o", help="Folder (default RUN/explain).")] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            "-d",
            help="Manifest: explain cases of --split (scored against their boxes, 3D label maps or nodules).",
        ),
    ] = None,
    split: Annotated[str, typer.Option("--split", help="With --data: the split whose cases are explained.")] = "test",
    cases: Annotated[int, typer.Option("--cases", min=1, help="With --data: how many cases.")] = 16,
    slice_index: Annotated[
        int | None, typer.Option("--slice", help="3D inputs: which slice (0-based) the 2D model classifies.")
    ] = None,
    checks: Annotated[
        bool, typer.Option("--checks/--no-checks", help="Deletion/insertion curves and the weight-randomisation test.")
    ] = True,
    layer: Annotated[
        str | None,
        typer.Option(
            "--layer", help="Layer Grad-CAM reads, e.g. model.layer3 (default: the last spatial feature map)."
        ),
    ] = None,
) -> None:
    """Explain a run's predictions: attribution maps (Grad-CAM, Grad-CAM++, occlusion, integrated
    gradients) as PNG overlays, each scored for faithfulness (deletion/insertion), checked against
    randomised weights, and, for manifest cases with boxes, by the share of the map inside them."""
    from medsight.explain import explain_files, explain_split, write_explanations
    from medsight.explain.explainer import summary_table
    from medsight.inference import Predictor
    from medsight.io.atomic import check_writable

    if not inputs and data is None:
        raise ConfigError("give image files to explain, or --data MANIFEST for the cases of a split")
    if inputs and data is not None:
        raise ConfigError("give either image files or --data MANIFEST, not both")
    folder = output if output is not None else run / "explain"
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--out {folder} is a file; give a folder for the overlays")
    check_writable(folder, option="--out", file=False)  # before any work: its parent must exist
    predictor = Predictor.from_run(run, precision="fp32", backend="torch")
    options = {"methods": method or ["gradcam"], "target": target, "faithfulness": checks, "sanity": checks,
               "layer": layer}  # fmt: skip
    with progress_bar() as progress:
        if data is not None:
            result = explain_split(predictor, data, split=split, cases=cases, progress=progress, **options)
        else:
            result = explain_files(predictor, inputs or [], slice_index=slice_index, progress=progress, **options)
    written = write_explanations(result, folder)
    frame = summary_table(result)
    table = Table(*frame.columns, title=f"{len(result.images)} image(s) explained")
    for row in frame.itertuples(index=False):
        table.add_row(*map(str, row))
    out.print(table)
    for method, summary in result.summary.items():
        random = summary.get("randomisation")
        if random and not random["changed"]:
            err.print(f"[yellow]warning:[/] {method} maps barely change when the weights are randomised "
                      f"(rank correlation {random['mean_rank_correlation']:.2f}): they show the image more than "
                      "what the model learned", highlight=False)  # fmt: skip
    out.print(f"wrote {sum(len(i.maps) for i in result.images)} overlay(s) and {written}")


def register(app: typer.Typer) -> None:
    app.command("explain")(friendly(explain_command))
