"""The failure gallery of a 3D segmentation run: its worst-segmented images, segmented again.

An evaluation keeps each image's figures (``predictions_<split>.csv``), not its predicted label
map, so the report reads the few worst images again from the evaluated manifest and has the run's
model segment them (seconds each): the slice where the reference holds most of the structures is
shown with each structure's reference outline (solid) and the prediction's (dashed).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medsight.core.errors import MedsightError
from medsight.validation.figures import panels, png

__all__ = ["segmentation_gallery", "worst_segmented"]

log = logging.getLogger(__name__)

_COLOURS = ("#2ca02c", "#d62728", "#1f77b4", "#ff7f0e", "#9467bd", "#17becf", "#e377c2", "#bcbd22")


def worst_segmented(table: pd.DataFrame, count: int) -> pd.DataFrame:
    """The ``count`` rows of a segmentation's per-image figures with the lowest mean Dice over its
    structures (images whose every Dice is undefined left out), worst first, with that mean as
    ``mean_dice``."""
    columns = [c for c in table.columns if c.startswith("dice_")]
    if not columns or table.empty:
        return table.iloc[:0].assign(mean_dice=pd.Series(dtype=float))
    mean = table[columns].apply(pd.to_numeric, errors="coerce").mean(axis=1, skipna=True)
    ranked = table.assign(mean_dice=mean).dropna(subset=["mean_dice"])
    return ranked.sort_values("mean_dice", kind="stable").head(count)


def _slice_index(reference: np.ndarray, predicted: np.ndarray) -> int:
    """The slice (first axis) with the most reference voxels; the prediction's when the reference is empty."""
    for labels in (reference, predicted):
        counts = (labels > 0).reshape(labels.shape[0], -1).sum(axis=1)
        if counts.any():
            return int(np.argmax(counts))
    return labels.shape[0] // 2


def _grey(image: np.ndarray) -> np.ndarray:
    low, high = np.nanpercentile(image, [1, 99]) if image.size else (0.0, 1.0)
    return np.clip((image - low) / max(float(high - low), 1e-6), 0, 1)


def segmentation_gallery(
    run_dir: Path, table: pd.DataFrame, manifest_path: str | Path | None, *, count: int = 3
) -> list[dict[str, str]]:
    """A figure of the run's ``count`` worst-segmented images of the evaluated split (see the module);
    none where the table holds no Dice, the manifest or the images cannot be read any more, or the
    model cannot be loaded (logged: a report is still written)."""
    worst = worst_segmented(table, count)
    if worst.empty or "label_column" not in worst.columns or not manifest_path:
        return []
    try:
        return _figure(run_dir, worst, Path(manifest_path))
    except (MedsightError, OSError, ValueError) as exc:  # the report stands without its gallery
        log.warning("failure gallery left out: %s", exc)
        return []


def _figure(run_dir: Path, worst: pd.DataFrame, manifest_path: Path) -> list[dict[str, str]]:
    import matplotlib.pyplot as plt

    from medsight.data.cases import pairings, read_case
    from medsight.data.manifest import Manifest
    from medsight.inference import Predictor

    manifest = Manifest.load(manifest_path)
    by_case = manifest.table.set_index(manifest.table["case_id"].astype(str))
    by_label = {p.label: p for p in pairings(manifest)}
    predictor = Predictor.from_run(run_dir)
    task: Any = predictor.task
    shown = []
    for _, row in worst.iterrows():
        case, column = str(row["case_id"]), str(row["label_column"])
        if case not in by_case.index or column not in by_label:
            log.info("failure gallery: %s (%s) is not in %s any more; left out", case, column, manifest_path)
            continue
        source = by_case.loc[[case]].iloc[0]
        images = read_case(manifest, source, by_label[column])
        if images.label is None:
            continue
        _, maps = predictor.predict_volumes([images.image])
        if not maps:
            return []
        truth = np.asarray(images.label.array[0])
        predicted = np.asarray(maps[0].array[0])
        shown.append((row, column, images.image, truth, predicted))
    if not shown:
        return []
    figure, axes = panels(len(shown))
    names = list(task.structures)
    for axis, (row, column, image, truth, predicted) in zip(axes, shown, strict=True):
        z = _slice_index(truth, predicted)
        spacing = image.geometry.spacing
        axis.imshow(_grey(np.asarray(image.array[0, z], dtype=float)), cmap="gray", interpolation="lanczos",
                    aspect=float(spacing[1]) / float(spacing[2]))  # fmt: skip
        mine, theirs = task.structure_masks(predicted[z][None]), task.structure_masks(truth[z][None])
        for i, name in enumerate(names):
            colour = _COLOURS[i % len(_COLOURS)]
            for mask, style in ((theirs[name][0], "solid"), (mine[name][0], "dashed")):
                if mask.any() and not mask.all():
                    axis.contour(mask.astype(float), levels=[0.5], colors=[colour], linestyles=style, linewidths=1)
        dice = ", ".join(f"{n} {float(row[f'dice_{n}']):.2f}" for n in names if pd.notna(row.get(f"dice_{n}")))
        phase = "" if column == "label" else f" ({column.removeprefix('label_')})"
        axis.set_title(f"{row['case_id']}{phase}, slice {z}\nDice {dice}", fontsize=8)
        axis.axis("off")
    figure.tight_layout()
    key = ", ".join(f"{n} {_COLOURS[i % len(_COLOURS)]}" for i, n in enumerate(names))
    caption = (f"The images of the evaluated split segmented worst (lowest mean Dice over the structures), "
               f"segmented again by the run's model: the slice where the reference has most voxels, each "
               f"structure's reference outlined solid and the prediction dashed ({key}).")  # fmt: skip
    source = png(figure)
    plt.close("all")
    return [{"title": "Worst segmentations", "caption": caption, "src": source}]
