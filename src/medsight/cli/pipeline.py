"""``medsight train | evaluate | predict | compare | demo``: written once, for every task."""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from medsight.cli.common import err, friendly, out, progress_bar, state
from medsight.core.errors import ConfigError, InputError, MedsightError
from medsight.engine.builtin import builtin_recipes

if TYPE_CHECKING:
    from medsight.validation.demo import DemoPlan, DemoRow

# torch, MONAI, pandas and the engine are imported inside each command: `--help` stays instant


UncertaintyOption = Annotated[
    str | None,
    typer.Option("--uncertainty", help="tta, mc-dropout or ensemble: each score the mean of several predictions, "
                 "with its spread as sd_<column> (evaluate adds referral curves)."),
]  # fmt: skip
SamplesOption = Annotated[int, typer.Option("--samples", min=2, help="Predictions per case for tta / mc-dropout.")]
EnsembleOption = Annotated[
    list[Path] | None,
    typer.Option("--ensemble", help="Another run of the ensemble, repeatable (implies --uncertainty ensemble)."),
]


def _uncertainty(method: str | None, samples: int, ensemble: list[Path] | None) -> Any:
    """The :class:`~medsight.inference.Uncertainty` the options ask for, or None."""
    if method is None and not ensemble:
        return None
    from medsight.inference import Uncertainty

    return Uncertainty(method or "ensemble", samples=samples, members=tuple(ensemble or ()))


def _manifest_for(data: Path, run: Path) -> Path:
    """A manifest file as is; a data set folder is read into ``<run>.manifest.csv`` first."""
    from medsight.data import build_manifest

    if data.is_file():
        return data
    manifest = build_manifest(data)
    target = run_manifest(run)
    manifest.save(target)
    out.print(f"read {data} as {manifest.info['dataset']}: {len(manifest)} cases -> {target}")
    return target


def train_command(
    recipe: Annotated[
        str,
        typer.Option("--recipe", "-r", help="Built-in recipe or a YAML file: " + ", ".join(sorted(builtin_recipes()))),
    ],
    data: Annotated[Path, typer.Option("--data", "-d", help="Manifest (.csv/.parquet) or a data set folder.")],
    output: Annotated[Path, typer.Option("--out", "-o", help="Run folder to create.")],
    epochs: Annotated[int | None, typer.Option("--epochs", help="Override train.epochs.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override any recipe key: train.lr=3e-4.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda.")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")
    ] = False,
    nproc: Annotated[
        int,
        typer.Option("--nproc", min=1, help="Train with N processes (DDP through torchrun): one per GPU, or CPUs."),
    ] = 1,
) -> None:
    """Train a recipe; the run folder gets the config, metrics.jsonl and best/last checkpoints."""
    from medsight.engine import is_main_process, launched_by_torchrun, process_group
    from medsight.engine.distributed import barrier
    from medsight.engine.fit import fit
    from medsight.engine.recipe import load_recipe

    if output.exists() and not output.is_dir():
        raise InputError(f"--out {output} is a file; a run needs a folder (give a new folder name)")
    overrides = list(set_ or [])
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    if device is not None:
        overrides.append(f"train.device={device}")
    resolved = load_recipe(recipe, overrides)  # a bad recipe fails here, before any process starts
    if nproc > 1 and not launched_by_torchrun():
        manifest = _manifest_for(data, output)
        arguments = ["train", "--recipe", recipe, "--data", str(manifest), "--out", str(output)]
        arguments += [item for override in overrides for item in ("--set", override)]
        arguments += ["--resume"] if resume else []
        raise typer.Exit(_torchrun(nproc, arguments))
    with process_group(resolved.train.device):
        main = is_main_process()
        if main:
            manifest = _manifest_for(data, output)  # a data set folder is read once, by the first process
        barrier()
        if not main:
            manifest = data if data.is_file() else run_manifest(output)
        try:
            with progress_bar(enabled=main) as progress:
                result = fit(resolved, manifest, output, resume=resume, progress=progress)
        except KeyboardInterrupt:
            if main:
                err.print(_interrupted(output, resolved.train.epochs), highlight=False)
            raise typer.Exit(130) from None
    if not main:
        return
    out.print(
        f"trained {resolved.name} for {result.epochs_run} epoch(s) -> {result.run_dir} "
        f"(best epoch {result.best_epoch}"
        + (f", {result.best_metric:.4f})" if result.best_metric == result.best_metric else ")")
    )


def _interrupted(run: Path, epochs: int) -> str:
    """One line: where an interrupted run stopped, and the command that resumes it."""
    done = 0
    metrics = run / "metrics.jsonl"
    if metrics.is_file():  # a line is written after each epoch's checkpoint
        lines = [line for line in metrics.read_text().splitlines() if line.strip()]
        done = json.loads(lines[-1]).get("epoch", 0) if lines else 0
    command = ["medsight", *sys.argv[1:]]
    command += [] if "--resume" in command else ["--resume"]
    where = (
        f"after epoch {done} of {epochs} (last.pt holds epoch {done})"
        if done
        else f"during epoch 1 of {epochs}, before the first checkpoint (--resume starts it again)"
    )
    return f"interrupted: {run} stopped {where}; continue with: {shlex.join(command)}"


def run_manifest(run: Path) -> Path:
    """Where ``_manifest_for`` writes the manifest of a data set folder for ``run``."""
    return run.with_name(run.name + ".manifest.csv")


def _torchrun(nproc: int, arguments: list[str]) -> int:
    """Run ``medsight <arguments>`` in ``nproc`` processes under torchrun; its exit status."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    command += ["-m", "medsight", *(["--debug"] if state["debug"] else []), *arguments]
    out.print(f"starting {nproc} processes: {shlex.join(command)}")
    return subprocess.run(command, check=False).returncode


def evaluate_command(
    run: Annotated[Path, typer.Argument(help="Run folder of `medsight train`.")],
    data: Annotated[
        Path | None, typer.Option("--data", "-d", help="Manifest to evaluate on (default: the training one).")
    ] = None,
    split: Annotated[str, typer.Option("--split", help="Split to evaluate: test or val.")] = "test",
    bootstrap: Annotated[int | None, typer.Option("--bootstrap", help="Bootstrap resamples for the CIs.")] = None,
    output: Annotated[
        Path | None, typer.Option("--out", "-o", help="metrics JSON (default RUN/metrics_<split>.json).")
    ] = None,
    precision: Annotated[
        str, typer.Option("--precision", help="auto (bf16 for 3D models where the CPU runs it natively), fp32, bf16.")
    ] = "auto",
    uncertainty: UncertaintyOption = None,
    samples: SamplesOption = 8,
    ensemble: EnsembleOption = None,
    temperature: Annotated[
        bool,
        typer.Option(
            "--temperature",
            help="Fit a temperature per probability on the validation split, scale "
            "before every figure, and keep it in the run for predict.",
        ),
    ] = False,
) -> None:
    """Metrics with 95 % CIs (bootstrap by patient); operating points chosen on the validation split."""
    from medsight.validation import evaluate_run

    repeated = _uncertainty(uncertainty, samples, ensemble)
    with progress_bar() as progress:
        report = evaluate_run(run, manifest_path=data, split=split, bootstrap=bootstrap, out=output,
                              precision=precision, progress=progress, uncertainty=repeated,
                              temperature=temperature)  # fmt: skip
    table = Table(
        "figure",
        "estimate [95 % CI]",
        title=f"{report.recipe} on {split}: {report.cases} cases, {report.patients} patients",
    )
    for name, value in report.figures.items():
        table.add_row(name, value.text())
    out.print(table)
    for warning in report.warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)
    out.print(f"wrote {output or Path(run) / f'metrics_{split}.json'}")


def report_command(
    run: Annotated[Path, typer.Argument(help="Run folder, evaluated with `medsight evaluate`.")],
    split: Annotated[str, typer.Option("--split", help="The split the run was evaluated on.")] = "test",
    output: Annotated[
        Path | None, typer.Option("--out", "-o", help="HTML page to write (default RUN/report.html).")
    ] = None,
) -> None:
    """Validation report: one self-contained HTML page (and report.json) of an evaluated run."""
    from medsight.explain import GalleryMaps
    from medsight.validation import write_report

    page = write_report(run, split=split, out=output, explainer=GalleryMaps)
    out.print(f"wrote {page} and {page.with_suffix('.json')}")


def predict_command(
    run: Annotated[Path, typer.Argument(help="Run folder of `medsight train`, or a package of `medsight export`.")],
    inputs: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Image or DICOM files, or folders of them (one row per file); a risk model: tables (.csv)."
        ),
    ] = None,
    output: Annotated[Path, typer.Option("--out", "-o", help="CSV of predictions.")] = Path("predictions.csv"),
    data: Annotated[
        Path | None,
        typer.Option("--data", "-d", help="Predict a manifest's cases instead of files (prepared as in training)."),
    ] = None,
    split: Annotated[str, typer.Option("--split", help="With --data: all, train, val or test.")] = "all",
    slice_index: Annotated[
        int | None, typer.Option("--slice", help="3D inputs: which slice (0-based) the 2D model classifies.")
    ] = None,
    precision: Annotated[
        str, typer.Option("--precision", help="auto (bf16 for 3D models where the CPU runs it natively), fp32, bf16.")
    ] = "auto",
    uncertainty: UncertaintyOption = None,
    samples: SamplesOption = 8,
    ensemble: EnsembleOption = None,
    backend: Annotated[
        str,
        typer.Option(
            "--backend",
            help="auto (onnxruntime for a package's 2D or table ONNX network, and for its 3D one where PyTorch is "
            "not installed; else PyTorch), torch, onnx.",
        ),
    ] = "auto",
    dicom_out: Annotated[
        Path | None,
        typer.Option(
            "--dicom-out",
            help="Also write each DICOM input's results as DICOM into this folder: a measurement report "
            "(TID 1500 SR), and a SEG of its label map where the model makes one (needs the export extra).",
        ),
    ] = None,
    dicom_overlay: Annotated[
        bool,
        typer.Option(
            "--dicom-overlay",
            help="With --dicom-out: also a secondary-capture image of the label map "
            "over the slice where it has most voxels, for viewers that do not show SEG; for a 2D classifier, "
            "its Grad-CAM heat map of the most probable finding over each DICOM image.",
        ),
    ] = False,
    dicom_seg: Annotated[
        str,
        typer.Option(
            "--dicom-seg",
            help="With --dicom-out: binary (the label map) or fractional (each structure's probability, 8 bits; "
            "segmentation models).",
        ),
    ] = "binary",
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="Spread the inputs over Ray workers, each holding the model once (pip install 'medsight[dist]'): "
            "a Ray of this machine, or the cluster of --ray-address / RAY_ADDRESS (paths must be on a shared disk).",
        ),
    ] = False,
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="With --ray: the cluster's address (e.g. ray://head:10001).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="With --ray: how many workers (default: one per CPU).")
    ] = None,
) -> None:
    """Predict on image files or DICOM; one row per image. Mammography runs also write breast-
    and exam-level scores (``<out>_breasts.csv``, ``<out>_exams.csv``) fused as in evaluation;
    segmentation runs write a label map per input (a DICOM folder is one volume) into ``<out>_masks/``.
    With ``--data``, a manifest's cases are predicted instead (cardiac models add ``<out>_function.csv``:
    volumes, EF and LV mass per case, to join to the manifest as features of a risk model)."""
    from medsight.data.manifest import Manifest
    from medsight.inference.runtime import predict_package, runs_without_torch, runtime_model, torch_available
    from medsight.io.atomic import check_writable

    if bool(inputs) == (data is not None):
        raise typer.BadParameter("give input files or --data MANIFEST (one of the two)")
    if split not in ("all", "train", "val", "test"):
        raise typer.BadParameter(f"--split must be all, train, val or test, got {split!r}")
    check_writable(output, option="--out")  # before any work: a bad --out must not waste the predictions
    if dicom_overlay and dicom_out is None:
        raise typer.BadParameter("--dicom-overlay writes into the --dicom-out folder: give --dicom-out too")
    if dicom_out is not None and data is not None:
        raise typer.BadParameter("--dicom-out writes DICOM results per input file or folder; give files, not --data")
    if dicom_out is not None:
        if dicom_out.exists() and not dicom_out.is_dir():
            raise InputError(f"--dicom-out {dicom_out} is a file; give a folder for the DICOM results")
        check_writable(dicom_out, option="--dicom-out", file=False)
    if dicom_seg not in ("binary", "fractional"):
        raise typer.BadParameter(f"--dicom-seg must be binary or fractional, got {dicom_seg!r}")
    fractional = dicom_seg == "fractional"
    if fractional and dicom_out is None:
        raise typer.BadParameter("--dicom-seg fractional writes into the --dicom-out folder: give --dicom-out too")
    if (ray_address is not None or workers is not None) and not ray:
        raise typer.BadParameter("--ray-address and --workers spread the work over Ray: give --ray too")
    masks = output.with_name(f"{output.stem}_masks")  # label maps, for models that make them
    plain = not (data or uncertainty or ensemble or ray) and precision in ("auto", "fp32")
    # without PyTorch the runtime answers for the package (what it cannot predict is named there)
    runtime = plain and (runs_without_torch(run, backend=backend) or not torch_available())
    if runtime and dicom_overlay and not _segments(run):  # a classifier's heat map: Grad-CAM on PyTorch
        if not torch_available():
            raise ConfigError("--dicom-overlay draws a classifier's Grad-CAM heat map, which needs PyTorch: "
                              "pip install torch==2.13.0, or leave --dicom-overlay out")  # fmt: skip
        runtime = False
    model: Any
    predictor = None
    if runtime:
        # a 2D classifier or 3D segmenter package on onnxruntime: no PyTorch import (the same rows)
        model = runtime_model(run)
        _check_fractional(model, fractional)
        with progress_bar() as progress:
            table = predict_package(run, inputs or [], masks=masks, slice_index=slice_index,
                                    probabilities=fractional, progress=progress)  # fmt: skip
    else:
        from medsight.inference import Predictor

        repeated = _uncertainty(uncertainty, samples, ensemble)
        model = predictor = Predictor.from_run(run, precision=precision, backend=backend)  # type: ignore[arg-type]
        if dicom_out is not None and predictor.task.spatial_dims == 0:
            raise ConfigError(f"the {predictor.package.recipe} model reads tables, not images; --dicom-out writes "
                              "DICOM results that refer to images")  # fmt: skip
        _check_fractional(predictor, fractional)
        with progress_bar() as progress:
            if ray:
                from medsight.inference.distributed import predict_on_ray

                manifest = Manifest.load(data) if data is not None else None
                table = predict_on_ray(predictor, inputs=None if manifest is not None else inputs, manifest=manifest,
                                       split=split, address=ray_address, workers=workers, slice_index=slice_index,
                                       masks=masks, uncertainty=repeated, progress=progress,
                                       probabilities=fractional).table()  # fmt: skip
            elif data is not None:
                prepared = predictor.prepare(Manifest.load(data), progress=progress)
                table = predictor.predict_split(prepared, split, uncertainty=repeated).table()
            else:
                table = predictor.predict_files(inputs or [], slice_index=slice_index, masks=masks,
                                                progress=progress, uncertainty=repeated,
                                                probabilities=fractional).table()  # fmt: skip
    table.to_csv(output, index=False)
    out.print(f"wrote {len(table)} prediction(s) to {output}")
    if "output" in table:
        out.print(f"wrote {len(table)} label map(s) on the inputs' grids to {masks}/")
    if dicom_out is not None:
        from medsight.export.dicom_results import write_dicom_results

        written = write_dicom_results(model, table, dicom_out, overlay=dicom_overlay, fractional=fractional)
        classes = model.task.label_classes()  # models that make label maps: SEG and label-map overlays
        segs, reports = sum(w.seg is not None for w in written), sum(w.sr is not None for w in written)
        overlays = f" and {sum(w.overlay is not None for w in written)} overlay(s)" if dicom_overlay and classes else ""
        kind = " fractional" if fractional else ""
        out.print(f"wrote {reports} DICOM measurement report(s), {segs}{kind} DICOM SEG object(s){overlays} to "
                  f"{dicom_out}/")  # fmt: skip
        for note in (w for w in written if w.reason):
            err.print(f"{note.input}: {note.reason}", highlight=False)
        if dicom_overlay and predictor is not None and predictor.task.spatial_dims == 2 and not classes:
            from medsight.explain import explainer_of, image_heat_map
            from medsight.export.dicom_results import algorithm_of, write_heat_overlays

            explainer = explainer_of(predictor)  # Grad-CAM reads the PyTorch network
            skipped = write_heat_overlays(written, dicom_out, algorithm=algorithm_of(predictor),
                                          heat_map=lambda path: image_heat_map(explainer, path))  # fmt: skip
            for source, reason in skipped:
                err.print(f"{source}: no heat-map overlay ({reason})", highlight=False)
            drawn = sum(w.sr is not None for w in written) - len(skipped)
            out.print(f"wrote {drawn} heat-map overlay(s) (Grad-CAM of the most probable finding) to {dicom_out}/")
    if predictor is None:
        return  # the runtime's models (2D classifiers without fusion, segmenters of files) combine nothing
    try:
        grouped = predictor.grouped(table)
    except MedsightError as exc:
        err.print(f"[yellow]warning:[/yellow] {exc}")
        return
    for level, frame in grouped.items():
        target = output.with_name(f"{output.stem}_{level}.csv")
        frame.to_csv(target, index=False)
        out.print(f"wrote {len(frame)} {level.rstrip('s')}-level score(s) to {target}")


def _segments(package: Path) -> bool:
    """Whether a package's model makes label maps (its overlays need no PyTorch), from its package.json."""
    from medsight.inference.runtime import runtime_model

    try:
        return bool(runtime_model(package).task.label_classes())
    except MedsightError:
        return False


def _check_fractional(model: Any, fractional: bool) -> None:
    if fractional and not model.task.probability_structures():
        raise ConfigError(f"the {model.package.recipe} model makes no probability maps; --dicom-seg fractional is "
                          "for segmentation models")  # fmt: skip


def compare_command(
    run_a: Annotated[Path, typer.Argument(help="First run folder.")],
    run_b: Annotated[Path, typer.Argument(help="Second run folder.")],
    split: Annotated[str, typer.Option("--split", help="Split both runs were evaluated on.")] = "test",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    bootstrap: Annotated[
        int, typer.Option("--bootstrap", min=0, help="Patient resamples for the difference's CI.")
    ] = 1000,
) -> None:
    """Compare two runs' AUCs on the same cases: DeLong's test clustered by patient (Obuchowski where a
    patient has several cases) and a patient-level paired bootstrap CI of the difference."""
    from medsight.tasks.results import json_ready
    from medsight.validation import compare_runs

    result = compare_runs(run_a, run_b, split=split, bootstrap=bootstrap)
    if as_json:
        print(json.dumps(json_ready(result), indent=2))
        return
    title = f"{run_a} vs {run_b}: {result['cases']} cases, {result['patients']} patients"
    table = Table("score", "AUC A", "AUC B", "difference [95 % CI]", "p", "test", title=title)
    for name, test in result["tests"].items():
        ci = test["difference_ci"]
        known = ci["low"] is not None and not math.isnan(ci["low"])
        interval = f" [{ci['low']:+.3f}, {ci['high']:+.3f}]" if known else ""
        table.add_row(name, f"{test['auc_a']:.3f}", f"{test['auc_b']:.3f}", f"{test['difference']:+.3f}{interval}",
                      f"{test['p_value']:.3g}", test["method"])  # fmt: skip
    out.print(table)


def plan_command(
    data: Annotated[Path, typer.Option("--data", "-d", help="Manifest (.csv/.parquet) or a data set folder.")],
    output: Annotated[Path, typer.Option("--out", "-o", help="Plan file to write (JSON).")] = Path("plan.json"),
    memory_gb: Annotated[
        float, typer.Option("--memory-gb", help="Memory a training step may take (RAM on CPU, GPU memory).")
    ] = 8.0,
    modality: Annotated[str | None, typer.Option("--modality", help="CT or MR (default: from the images).")] = None,
    base_filters: Annotated[int, typer.Option("--base-filters", min=1, help="U-Net filters at full size.")] = 32,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a plan field: patch_size=[64,64,64].")
    ] = None,
) -> None:
    """Fingerprint a segmentation data set and plan its preprocessing, network, patch and batch."""
    from medsight.data import Manifest, build_manifest
    from medsight.engine.plan import plan_dataset, save_plan
    from medsight.io.atomic import check_writable

    check_writable(output, option="--out")
    manifest = Manifest.load(data) if data.is_file() else build_manifest(data)
    with progress_bar() as progress:
        plan = plan_dataset(manifest, memory_gb=memory_gb, modality=modality, base_filters=base_filters,
                            overrides=set_ or (), progress=progress)  # fmt: skip
    save_plan(plan, output)
    found = plan.fingerprint
    thick = "" if plan.anisotropic_axis is None else f" (axis {'zyx'[plan.anisotropic_axis]} kept thick)"
    out.print(
        f"{found.cases} labelled {found.modality} images, median spacing {_mm(found.median_spacing)} mm\n"
        f"spacing {_mm(plan.spacing)} mm{thick}; patch {'x'.join(map(str, plan.patch_size))}, batch "
        f"{plan.batch_size}; U-Net of {len(plan.network.filters)} levels, filters {plan.network.filters}; "
        f"~{plan.estimated_memory_gb:.1f} of {plan.memory_gb:g} GB\nwrote {output}"
    )


def _mm(values: tuple[float, ...]) -> str:
    return "x".join(f"{v:.3g}" for v in values)


def register(app: typer.Typer) -> None:
    """Add the commands to the main app."""
    app.command("plan")(friendly(plan_command))
    app.command("train")(friendly(train_command))
    app.command("evaluate")(friendly(evaluate_command))
    app.command("predict")(friendly(predict_command))
    app.command("compare")(friendly(compare_command))
    app.command("report")(friendly(report_command))
    app.command("demo")(friendly(demo_command))


def demo_table(rows: list[DemoRow]) -> Table:
    """The demo's summary: one line per figure, narrow enough for an 80-column terminal
    (the recipe of each row is in ``summary.json``)."""
    cells = []
    for row in rows:
        if row.lower_is_better:
            mark, target = ("[green]met[/]" if row.met else "[red]above[/]"), f"<= {row.target:g}"
        else:
            mark, target = ("[green]met[/]" if row.met else "[red]below[/]"), f">= {row.target:g}"
        cells.append((row.label, f"{row.estimate:.3f} [{row.low:.3f}, {row.high:.3f}]", target, mark))
    table = Table(title="medsight demo (phantom test sets)")
    table.add_column("figure", overflow="fold")  # a long name folds onto a second line; the figures never do
    for k, header in enumerate(("estimate [95 % CI]", "target", ""), start=1):
        width = max([len(header), *(len(Text.from_markup(c[k]).plain) for c in cells)])
        table.add_column(header, no_wrap=True, min_width=width)
    for cell in cells:
        table.add_row(*cell)
    return table


def demo_command(
    output: Annotated[Path, typer.Option("--out", "-o", help="Folder for phantoms, runs and reports.")] = Path(
        "medsight-demo"
    ),
    quick: Annotated[bool, typer.Option("--quick", help="A tiny run that only checks the chain works.")] = False,
    long: Annotated[
        bool,
        typer.Option("--long", help="More and larger 2D images, more epochs (~28 min on 2 AVX-512 cores)."),
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed for phantoms, splits and training.")] = 0,
    budget: Annotated[
        float | None,
        typer.Option(
            "--budget",
            help="Minutes the demo may take here (default: 10 on CPUs with AVX-512 or AMX, 15 on others): "
            "over it the lean settings run, and recipes that still do not fit are left out (and named).",
        ),
    ] = None,
    recipes: Annotated[
        str | None,
        typer.Option("--recipes", help="Run some recipes only, comma-separated (e.g. dr-grading,brain-tumor-seg)."),
    ] = None,
) -> None:
    """Make phantoms for DR grading, chest X-ray findings, mammography, brain tumour segmentation,
    cardiac function, cardiac risk, mammography risk and lung nodule detection; train, evaluate and
    summarise each.

    It first times a few training steps (seconds) to pick the numeric mode and estimate how long
    it will take on this CPU; a standard demo that would overrun --budget runs lean settings,
    and where even those would, as many recipes as fit run and the others are named with the
    command that runs them.
    """
    import time

    from medsight.explain import GalleryMaps, explain_run
    from medsight.validation.demo import plan_demo, run_demo

    if quick and long:
        raise ConfigError("--quick and --long exclude each other: pick one (or neither, the standard demo)")
    started = time.perf_counter()
    chosen = [r.strip() for r in recipes.split(",") if r.strip()] if recipes is not None else None
    plan = plan_demo("quick" if quick else "long" if long else "standard", budget_minutes=budget, recipes=chosen)
    out.print(plan.describe())

    def replanned(changed: DemoPlan, message: str) -> None:
        nonlocal plan
        plan = changed
        out.print(f"[yellow]{message}[/]")

    with progress_bar() as progress:
        rows = run_demo(output, seed=seed, progress=progress, plan=plan, on_replan=replanned,
                        explain=explain_run, explainer=GalleryMaps)  # fmt: skip
    out.print(demo_table(rows))
    if quick:
        out.print("[yellow]quick mode: one epoch on a handful of tiny images, so these figures mean nothing[/]")
    if plan.left_out:
        out.print(f"[yellow]{plan.left_out_note()}[/]")
    out.print(f"done in {time.perf_counter() - started:.0f} s; runs, metrics and predictions are in {output}/")
    if (output / "index.html").is_file():
        out.print(
            f"validation reports: {output / 'index.html'} (one page per recipe; image models explained in RUN/explain/)"
        )
