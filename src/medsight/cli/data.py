"""``medsight data …``: manifests from public data sets, patient-level splits, quality control."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from medsight.cli.common import err, friendly, out, progress_bar
from medsight.core.errors import ConfigError
from medsight.data.phantoms import BUILTIN_PHANTOMS

# pandas, the adapters and the phantom generators are imported inside each command (instant --help)

app = typer.Typer(help="Read public data sets into manifests, split them by patient, check their quality.")


def _parse_options(values: list[str] | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option takes KEY=VALUE, got {item!r}")
        options[key.strip()] = value.strip()
    return options


@app.command("formats")
@friendly
def formats() -> None:
    """List the data set layouts medsight reads."""
    from medsight.data import registered_adapters

    table = Table("format", "data set", "recipe", "options")
    for name, adapter in registered_adapters().items():
        table.add_row(name, adapter.title, adapter.task, ", ".join(adapter.Options.model_fields) or "-")
    out.print(table)


@app.command("manifest")
@friendly
def manifest(
    root: Annotated[Path, typer.Argument(help="The data set's top folder as downloaded (or a .csv / .npz file).")],
    output: Annotated[Path, typer.Option("--out", "-o", help="Manifest to write (.csv or .parquet).")] = Path(
        "manifest.csv"
    ),
    fmt: Annotated[str, typer.Option("--format", "-f", help="Layout name (see `medsight data formats`) or auto.")] = (
        "auto"
    ),
    option: Annotated[
        list[str] | None, typer.Option("--option", help="Adapter option KEY=VALUE, e.g. uncertain=ones (CheXpert).")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing manifest.")] = False,
) -> None:
    """Read a public data set's layout into a manifest (one row per case)."""
    from medsight.data import build_manifest

    result = build_manifest(root, format=fmt, options=_parse_options(option))
    written = result.save(output, overwrite=overwrite)
    table = result.table
    splits = table["split"].replace("", "unsplit").value_counts().to_dict()
    out.print(
        f"wrote {written}: {len(table)} cases, {table['patient_id'].nunique()} patients "
        f"({result.info['dataset']}, splits {splits})"
    )
    for note in result.info.get("notes", []):
        err.print(f"[yellow]note:[/] {note}")


@app.command("split")
@friendly
def split(
    manifest_path: Annotated[Path, typer.Argument(help="Manifest to split (.csv or .parquet).")],
    by: Annotated[str, typer.Option("--by", help="Grouping column: patient (patient_id) or any column.")] = "patient",
    stratify: Annotated[str | None, typer.Option("--stratify", help="Column to balance across splits.")] = None,
    folds: Annotated[int | None, typer.Option("--folds", help="K-fold cross-validation of the non-test cases.")] = None,
    val: Annotated[float, typer.Option("--val", help="Share of non-test patients for validation.")] = 0.15,
    test: Annotated[
        float, typer.Option("--test", help="Share of patients held out when there is no official test.")
    ] = (0.15),
    seed: Annotated[int, typer.Option("--seed", help="Random seed (the split is reproducible).")] = 0,
    ignore_official: Annotated[
        bool, typer.Option("--ignore-official", help="Re-split even where the data set has an official split.")
    ] = False,
    output: Annotated[Path | None, typer.Option("--out", "-o", help="Write here instead of updating in place.")] = None,
) -> None:
    """Assign train/val/test (or folds) by patient, stratified and reproducible."""
    from medsight.data import Manifest
    from medsight.data.splits import assign_splits

    source = Manifest.load(manifest_path)
    result = assign_splits(
        source,
        by="patient_id" if by == "patient" else by,
        stratify=stratify,
        folds=folds,
        val_fraction=val,
        test_fraction=test,
        seed=seed,
        respect_official=not ignore_official,
    )
    target = output or manifest_path
    result.save(target, overwrite=True)
    table = Table("split", "cases", "patients")
    for name, part in result.table.groupby("split"):
        table.add_row(str(name), str(len(part)), str(part["patient_id"].nunique()))
    out.print(table)
    if folds:
        out.print(f"{folds} folds in column 'fold' (test cases have fold -1)")
    out.print(f"wrote {target}")


@app.command("join")
@friendly
def join(
    manifest_path: Annotated[Path, typer.Argument(help="Manifest to add columns to (.csv or .parquet).")],
    table_path: Annotated[
        Path, typer.Argument(help="Table with a case_id or patient_id column (clinical data, another model's outputs).")
    ],
    on: Annotated[
        str, typer.Option("--on", help="auto (case_id if the table has it), case_id or patient_id.")
    ] = "auto",
    columns: Annotated[
        str | None, typer.Option("--columns", help="Comma-separated columns to join (default: all but the keys).")
    ] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Overwrite columns the manifest already has.")] = False,
    output: Annotated[Path | None, typer.Option("--out", "-o", help="Write here instead of updating in place.")] = None,
) -> None:
    """Add columns of a table to a manifest's cases: clinical covariates and outcomes per patient, or a
    model's per-case outputs (e.g. `medsight predict CARDIAC_RUN --data M` writes EF and LV mass per case)."""
    from medsight.data import Manifest
    from medsight.data.join import join_table, read_table

    if on not in ("auto", "case_id", "patient_id"):
        raise ConfigError(f"--on takes auto, case_id or patient_id, got {on!r}")
    source = Manifest.load(manifest_path)
    table = read_table(table_path, needs="join reads a table (.csv or .parquet)")
    chosen = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
    result = join_table(source, table, on=on, columns=chosen, replace=replace)  # type: ignore[arg-type]
    target = output or manifest_path
    result.manifest.save(target, overwrite=True)
    out.print(f"joined {len(result.columns)} column(s) on {result.on} ({', '.join(result.columns)}): "
              f"{result.matched} of {len(source)} case(s) matched")  # fmt: skip
    if result.unmatched_cases:
        err.print(f"[yellow]warning:[/] {len(result.unmatched_cases)} case(s) found no row (e.g. "
                  f"{', '.join(result.unmatched_cases[:3])}); their new cells are empty")  # fmt: skip
    if result.unused_rows:
        out.print(f"{result.unused_rows} row(s) of the table matched no case")
    out.print(f"wrote {target}")


def _balance_table(balance: dict[str, Any]) -> Table | None:
    targets = balance.get("targets", {})
    if not targets:
        return None
    table = Table("target", "value", *sorted(balance["cases_per_split"]), title="class balance per split")
    for column, per_split in targets.items():
        values = sorted({v for counts in per_split.values() for v in counts})
        for value in values:
            cells = [str(per_split.get(s, {}).get(value, 0)) for s in sorted(balance["cases_per_split"])]
            table.add_row(column, "missing" if value == -1 else str(value), *cells)
    return table


@app.command("qc")
@friendly
def qc(
    manifest_path: Annotated[Path, typer.Argument(help="Manifest to check.")],
    json_path: Annotated[Path | None, typer.Option("--json", help="Where to write the JSON report.")] = None,
    no_images: Annotated[bool, typer.Option("--no-images", help="Check the table only (fast).")] = False,
    show: Annotated[int, typer.Option("--show", help="How many findings to list.")] = 20,
    recipe: Annotated[
        str | None, typer.Option("--recipe", "-r", help="Check the targets against this recipe's classes.")
    ] = None,
) -> None:
    """Check files, targets, masks, duplicates, leakage and balance; exit 1 when there are errors."""
    from medsight.data import Manifest
    from medsight.data.qc import run_qc

    classes, multilabel = None, False
    if recipe is not None:
        from medsight.engine.recipe import load_recipe

        task = load_recipe(recipe).task
        # class targets are checked for classification recipes; label maps are checked for every manifest
        classes, multilabel = getattr(task, "classes", None), task.kind == "multilabel"
    source = Manifest.load(manifest_path)
    with progress_bar() as progress:
        report = run_qc(source, read_images=not no_images, classes=classes, multilabel=multilabel, progress=progress)
    target = json_path or manifest_path.with_name(manifest_path.stem + ".qc.json")
    report.write_json(target)
    counts = Table("check", "errors", "warnings", "notes", title=f"QC of {manifest_path} ({len(source)} cases)")
    for check, by_severity in sorted(report.counts().items()):
        counts.add_row(
            check, str(by_severity.get("error", 0)), str(by_severity.get("warning", 0)), str(by_severity.get("info", 0))
        )
    out.print(counts)
    for finding in report.findings[:show]:
        colour = {"error": "red", "warning": "yellow", "info": "cyan"}[finding.severity]
        where = f"{finding.case_id}: " if finding.case_id else ""
        out.print(f"[{colour}]{finding.severity}[/] {finding.check}: {where}{finding.message}", highlight=False)
    if len(report.findings) > show:
        out.print(f"... {len(report.findings) - show} more in {target}")
    balance = _balance_table(report.balance)
    if balance is not None:
        out.print(balance)
    out.print(f"wrote {target}: {len(report.errors)} error(s), {len(report.warnings)} warning(s)")
    if report.errors:
        raise typer.Exit(1)


@app.command("make-phantom")
@friendly
def make_phantom_command(
    recipe: Annotated[str, typer.Argument(help="Recipe: " + ", ".join(BUILTIN_PHANTOMS) + ".")],
    output: Annotated[Path, typer.Option("--out", "-o", help="Folder to create (written in the data set's layout).")],
    cases: Annotated[int, typer.Option("--cases", "-n", help="How many cases.")] = 100,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same data set.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty output folder.")] = False,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Real images the brain and lung phantoms build on (default ../shared/data)."),
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", help="A phantom's own setting, NAME=VALUE (e.g. voxel_mm=2 for brain-tumor-seg)."),
    ] = None,
) -> None:
    """Make phantom cases with known ground truth, in the layout of the matching public data set."""
    from medsight.data.phantoms import make_phantom, phantoms

    options = _parse_options(option)
    with progress_bar() as progress:
        written = make_phantom(recipe, output, cases=cases, seed=seed, overwrite=overwrite, progress=progress,
                               data_dir=data_dir, options=options)  # fmt: skip
    layout = phantoms()[recipe].layout
    out.print(f"wrote {cases} {recipe} case(s) to {written} ({layout} layout)")
    out.print(f"next: medsight data manifest {written} --out {written}/manifest.csv")
