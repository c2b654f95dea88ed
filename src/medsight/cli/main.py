"""The ``medsight`` command: thin wrappers that parse options, call the library and print."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.logging import RichHandler
from rich.table import Table

from medsight import __version__
from medsight.cli import data as data_commands
from medsight.cli import explain as explain_commands
from medsight.cli import export as export_commands
from medsight.cli import pipeline as pipeline_commands
from medsight.cli import serve as serve_commands
from medsight.cli.common import err, friendly, out, plain, progress_bar, reflow_help, state
from medsight.core.errors import ConfigError, InputError
from medsight.io.api import read, write
from medsight.io.formats import detect_format, output_format

if TYPE_CHECKING:
    from medsight.core.volume import Volume

# Nothing heavy at import time (torch, MONAI, pandas, pydicom): `medsight --help` must be instant.
# Each command imports what it needs; tests/cli/test_startup.py keeps it so.

app = typer.Typer(
    name="medsight",
    help="Deep learning on medical images: read, convert, train, evaluate, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        out.print(f"medsight {__version__}")
        raise typer.Exit()


app.add_typer(data_commands.app, name="data")
pipeline_commands.register(app)
explain_commands.register(app)
export_commands.register(app)
serve_commands.register(app)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show progress logs.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    state["debug"] = debug
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_time=False, show_path=debug)],
        force=True,
    )
    if not debug:
        logging.getLogger("pydicom").setLevel(logging.ERROR)


# ---------------------------------------------------------------------------------------
# shared options

SeriesOpt = Annotated[
    str | None,
    typer.Option("--series", help="DICOM folder with several series: a SeriesInstanceUID, or 'largest'."),
]
GapsOpt = Annotated[bool, typer.Option("--allow-gaps", help="DICOM: interpolate missing slices instead of failing.")]
SliceSpacingOpt = Annotated[
    float | None, typer.Option("--slice-spacing", help="DICOM multi-frame without spacing: frame spacing in mm.")
]
FramesOpt = Annotated[
    bool, typer.Option("--frames-as-channels", help="DICOM multi-frame: read frames as time points (channels).")
]


def _fmt(values: Any, digits: int = 4) -> str:
    return "(" + ", ".join(f"{float(v):.{digits}g}" for v in values) + ")"


def _describe(path: Path, volume: Volume, fmt: str) -> dict[str, Any]:
    g, m = volume.geometry, volume.metadata
    lo, hi = volume.intensity_range()
    return {
        "path": str(path),
        "format": fmt,
        "modality": m.modality,
        "shape": list(volume.array.shape),
        "dtype": str(volume.array.dtype),
        "spacing": list(g.spacing),
        "origin": list(g.origin),
        "far_corner": volume.geometry.far_corner(volume.spatial_shape).tolist(),
        "orientation": g.orientation_code,
        "direction": [list(r) for r in g.direction],
        "intensity_range": [lo, hi],
        "nonfinite_voxels": volume.nonfinite_count(),
        "window": list(m.window) if m.window else None,
        "rescale": list(m.rescale) if m.rescale else None,
        "photometric_interpretation": m.photometric_interpretation,
        "monochrome1_inverted": m.monochrome1_inverted,
        "spacing_assumed": m.spacing_assumed,
        "frames_ms": list(m.frame_times_ms) if m.frame_times_ms else None,
        "series_uid": m.series_uid,
        "series_description": m.series_description,
        "frame_of_reference_uid": g.frame_of_reference_uid,
    }


def _table(info: dict[str, Any], series: list[dict[str, Any]]) -> Table:
    table = Table(title=info["path"], show_header=False, title_justify="left")
    table.add_column("field", style="bold cyan")
    table.add_column("value")
    spacing = _fmt(info["spacing"]) + (" (assumed)" if info["spacing_assumed"] else "")
    rows = [
        ("format", info["format"]),
        ("modality", info["modality"] or "-"),
        ("shape (C, Z, Y, X)", str(tuple(info["shape"]))),
        ("dtype", info["dtype"]),
        ("spacing (z, y, x) mm", spacing),
        ("origin (x, y, z) mm LPS", _fmt(info["origin"], 6)),
        ("far corner mm LPS", _fmt(info["far_corner"], 6)),
        ("orientation", info["orientation"]),
        ("intensity range", f"{info['intensity_range'][0]:g} .. {info['intensity_range'][1]:g}"),
    ]
    if info["nonfinite_voxels"]:
        rows.append(("NaN/infinite voxels", f"[yellow]{info['nonfinite_voxels']} (left out of the range)[/]"))
    if info["window"]:
        rows.append(("window (centre, width)", _fmt(info["window"])))
    if info["rescale"]:
        rows.append(("rescale (slope, intercept)", _fmt(info["rescale"])))
    if info["photometric_interpretation"]:
        inv = " (inverted)" if info["monochrome1_inverted"] else ""
        rows.append(("photometric", info["photometric_interpretation"] + inv))
    if info["frames_ms"]:
        rows.append(("frames as channels", f"{len(info['frames_ms'])} at {info['frames_ms'][1]:g} ms steps"))
    if info["series_description"]:
        rows.append(("series", info["series_description"]))
    for key, value in rows:
        table.add_row(key, value)
    if series:
        listing = "\n".join(
            f"{s['uid']}  {s['files']} file(s)  {s['modality'] or '?'}  {s['description'] or ''}" for s in series
        )
        table.add_row(f"series in folder ({len(series)})", listing)
    return table


@app.command()
@friendly
def info(
    path: Annotated[Path, typer.Argument(help="Image file or DICOM folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    series: SeriesOpt = None,
    allow_gaps: GapsOpt = False,
    slice_spacing: SliceSpacingOpt = None,
    frames_as_channels: FramesOpt = False,
) -> None:
    """Show format, shape, spacing, origin, orientation and intensities of an image."""
    fmt = detect_format(path)
    found: list[dict[str, Any]] = []
    with progress_bar() as progress:
        if fmt == "dicom-series":  # headers read once: list the series, then read the chosen one
            from medsight.io.dicom_series import DicomFolder

            if slice_spacing is not None or frames_as_channels:
                raise ConfigError(
                    "--slice-spacing and --frames-as-channels apply to one multi-frame file, not a folder"
                )
            folder = DicomFolder(path, progress=progress)
            found = [s.to_dict() for s in folder.series()]
            chosen = "largest" if series is None and len(found) > 1 else series
            volume = folder.read(series_uid=chosen, allow_gaps=allow_gaps, progress=progress)
        else:
            volume = read(
                path,
                series_uid=series,
                allow_gaps=allow_gaps,
                slice_spacing=slice_spacing,
                frames_as_channels=frames_as_channels,
                progress=progress,
            )
    description = _describe(path, volume, fmt)
    if as_json:
        description["series_in_folder"] = found
        print(json.dumps(description, indent=2))
        return
    out.print(_table(description, found))
    if description["nonfinite_voxels"]:
        err.print(
            f"[yellow]warning:[/] {description['nonfinite_voxels']} voxel(s) are NaN or infinite; training and "
            "prediction refuse such images unless told to fill them (preprocess.nonfinite=fill, --nonfinite fill)",
            highlight=False,
        )
    if len(found) > 1:
        out.print(f"[yellow]{len(found)} series in this folder; showing the largest. Choose one with --series UID.[/]")


def _parse_window(text: str | None, volume: Volume) -> tuple[float, float] | None:
    if text is None:
        return None
    if text == "auto":
        if volume.metadata.window is not None:
            return volume.metadata.window
        import numpy as np

        finite = volume.array[np.isfinite(volume.array)] if volume.array.dtype.kind in "fc" else volume.array
        if finite.size == 0:
            raise InputError("--window auto: the image holds no finite value (all NaN or infinite)")
        lo, hi = np.percentile(finite, [0.5, 99.5])
        return float(lo + hi) / 2.0, max(float(hi - lo), 1e-6)
    try:
        centre, width = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--window takes CENTRE,WIDTH (e.g. 40,400) or 'auto'; got {text!r}") from None
    if not (math.isfinite(centre) and math.isfinite(width)) or width <= 0:
        raise ConfigError(f"--window needs a finite centre and a positive, finite width (e.g. 40,400); got {text!r}")
    return centre, width


def _same_or_inside(a: Path, b: Path) -> bool:
    """Whether ``a`` is ``b`` or lies inside it (both resolved)."""
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents


@app.command()
@friendly
def convert(
    source: Annotated[Path, typer.Argument(help="Image file or DICOM folder to read.")],
    target: Annotated[
        Path, typer.Argument(help="Output: .nii.gz, .nii, .nrrd, .mha, .png, .jpg, or a folder for a DICOM series.")
    ],
    series: SeriesOpt = None,
    allow_gaps: GapsOpt = False,
    slice_spacing: SliceSpacingOpt = None,
    frames_as_channels: FramesOpt = False,
    to: Annotated[str | None, typer.Option("--to", help="Output format, when the extension is not enough.")] = None,
    window: Annotated[
        str | None, typer.Option("--window", help="PNG/JPEG: CENTRE,WIDTH to map values to 8 bits, or 'auto'.")
    ] = None,
    slice_index: Annotated[int | None, typer.Option("--slice", help="PNG/JPEG: which slice of a 3D image.")] = None,
    modality: Annotated[str | None, typer.Option("--modality", help="DICOM output: CT or MR.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    nonfinite: Annotated[
        str,
        typer.Option(
            "--nonfinite", help="NaN/infinite voxels: 'error', or 'fill' with the lowest finite value (PNG/JPEG/DICOM)."
        ),
    ] = "error",
) -> None:
    """Convert between DICOM (file or folder), NIfTI, NRRD, MetaImage, PNG and JPEG."""
    if nonfinite not in ("error", "fill"):
        raise ConfigError(f"--nonfinite takes 'error' or 'fill', got {nonfinite!r}")
    out_fmt = output_format(target, to)
    if source.exists() and target.exists() and (_same_or_inside(source, target) or _same_or_inside(target, source)):
        raise InputError(
            f"{target} is (or holds, or lies inside) the input {source}: writing it would destroy the source. "
            "Choose another output path"
        )
    source_fmt = detect_format(source)
    is_dicom = source_fmt in ("dicom", "dicom-series")
    with progress_bar() as progress:
        volume = read(
            source,
            series_uid=series,
            allow_gaps=allow_gaps,
            slice_spacing=slice_spacing,
            frames_as_channels=frames_as_channels,
            # display formats show MONOCHROME1 the way a viewer would
            invert_monochrome1=is_dicom and out_fmt in ("png", "jpeg"),
            progress=progress,
        )
    if out_fmt in ("png", "jpeg", "dicom-series") and volume.nonfinite_count():
        from medsight.transforms.prepare2d import finite_or_filled

        try:  # 8-bit pictures and int16 DICOM cannot hold NaN: refuse (or fill), never write black
            volume = volume.with_array(finite_or_filled(volume.array, nonfinite))  # type: ignore[arg-type]
        except InputError as exc:
            raise InputError(f"{source}: {exc} (--nonfinite fill)") from None
    written = write(
        volume,
        target,
        format=to,
        overwrite=overwrite,
        window=_parse_window(window, volume),
        slice_index=slice_index,
        modality=modality,
        dicom_source=_dicom_template(source, source_fmt) if out_fmt == "dicom-series" and is_dicom else None,
    )
    out.print(
        f"wrote {written} ({out_fmt}, shape {tuple(volume.array.shape)}, spacing {_fmt(volume.geometry.spacing)} mm)"
    )


@app.command()
@friendly
def clean(
    folder: Annotated[Path, typer.Argument(help="Folder to sweep (with its subfolders).")],
) -> None:
    """Remove the hidden temporaries that interrupted writes (kill -9, power loss) left behind."""
    from medsight.core.errors import InputError
    from medsight.io.atomic import remove_stale_temporaries

    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; pass the folder that holds the outputs")
    removed = remove_stale_temporaries(folder, recursive=True)
    for path in removed:
        out.print(f"removed {path}")
    out.print(f"removed {len(removed)} stale temporary file(s) or folder(s) under {folder}")


def _dicom_template(source: Path, fmt: str) -> Any:
    """The header of the source's first DICOM file: what a DICOM -> DICOM conversion keeps."""
    from medsight.io.dicom_header import read_header
    from medsight.io.formats import files_under

    if fmt == "dicom":
        return read_header(source).dataset
    for path in files_under(source):
        try:
            return read_header(path).dataset
        except InputError:
            continue
    return None


def main() -> None:
    """Console-script entry point: usage errors are one ``error:`` line too (exit status 2)."""
    import sys

    try:  # typer >= 0.20 carries its own copy of click
        from typer._click import exceptions as click
    except ImportError:  # pragma: no cover
        from click import exceptions as click  # type: ignore[no-redef]

    try:
        code = app(standalone_mode=False)
    except click.NoArgsIsHelpError as exc:  # bare `medsight` or `medsight data`: the help
        exc.show()
        sys.exit(2)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "medsight"
        err.print(
            f"[bold red]error:[/] UsageError: {plain(exc.format_message())} (see `{where} --help`)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        err.print(f"[bold red]error:[/] {plain(exc.format_message())}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


reflow_help(app)  # after every command is registered

if __name__ == "__main__":  # pragma: no cover
    main()
