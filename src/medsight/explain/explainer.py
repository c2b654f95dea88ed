"""``medsight explain``: attribution maps of a run's model for image files or for the cases of a
manifest split, each checked (deletion/insertion faithfulness; the model randomisation test; energy
in the true boxes where the manifest has them), written as PNG overlays, the raw maps and
``explanations.json``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medsight.core.errors import ConfigError, InputError, MedsightError
from medsight.core.geometry import Geometry
from medsight.core.progress import Progress
from medsight.core.volume import Volume
from medsight.data.manifest import Manifest
from medsight.data.reading import read_case_image
from medsight.explain.attribution import METHODS, ExplainedNetwork, attribute, randomised
from medsight.explain.faithfulness import box_energy, deletion_insertion, mask_energy, rank_correlation
from medsight.inference import Predictor
from medsight.inference.predictor import prediction_dtype, read_input
from medsight.io import write
from medsight.io.atomic import atomic_file
from medsight.metrics.bootstrap import bootstrap_ci
from medsight.models.predict import autocast
from medsight.tasks.results import json_ready
from medsight.transforms.image2d import boxes_to_prepared

__all__ = [
    "ExplainResult",
    "ExplainedImage",
    "explain",
    "explain_files",
    "explain_run",
    "explain_split",
    "write_explanations",
]

log = logging.getLogger(__name__)

SANITY_IMAGES = 4  # images the model randomisation test is run on (it costs one more map each)
RANDOMISED_LIMIT = 0.5  # rank correlation under which a map counts as changed by randomised weights


@dataclass(frozen=True)
class Placement:
    """Where a 3D explanation's window lies: its corner on the network's grid (the plan's), that
    grid's shape, the way back to the input's grid, and the input's geometry."""

    offset: tuple[int, ...]
    grid: tuple[int, ...]
    to_source: Callable[[np.ndarray], np.ndarray]
    geometry: Geometry

    def on_source(self, found: np.ndarray) -> np.ndarray:
        """A window's map pasted into the network's grid (zero elsewhere), back on the input's grid."""
        full = np.zeros(self.grid, np.float32)
        inside = tuple(min(w, g - o) for w, g, o in zip(found.shape, self.grid, self.offset, strict=True))
        full[tuple(slice(o, o + n) for o, n in zip(self.offset, inside, strict=True))] = found[
            tuple(slice(0, n) for n in inside)
        ]
        return self.to_source(full)


@dataclass
class ExplainedImage:
    """One image's explanation.

    Attributes:
        name: The file, or the manifest's case id.
        patient: The patient (manifest cases), for CIs that resample patients.
        image: ``(C, H, W)`` the network's input in [0, 1] (what the overlays are drawn on).
        target: What was explained, and its ``probability``.
        maps: ``(H, W)`` attribution map per method, on the input's grid.
        checks: Per method: deletion/insertion areas, and energy in the boxes where there are boxes.
        boxes: ``(n, 4)`` the target's true boxes in the input's pixels, when known.
        placement: For a 3D window, where it lies in the input (its maps are written on the input's grid).
    """

    name: str
    patient: str | None
    image: np.ndarray
    target: str
    probability: float
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    boxes: np.ndarray | None = None
    placement: Placement | None = None


@dataclass
class ExplainResult:
    """Explanations of several images and, per method, their summary (means with patient CIs, the
    randomisation test, seconds per image)."""

    images: list[ExplainedImage]
    summary: dict[str, dict[str, Any]]
    model: dict[str, str]


def _methods(methods: Sequence[str]) -> list[str]:
    chosen = list(dict.fromkeys(m.strip().lower() for m in methods))
    unknown = [m for m in chosen if m not in METHODS]
    if unknown or not chosen:
        raise ConfigError(f"unknown explanation method(s) {unknown or methods}; choose from {', '.join(METHODS)}")
    return chosen


def explain(
    predictor: Predictor,
    images: Sequence[np.ndarray],
    names: Sequence[str],
    *,
    methods: Sequence[str] = ("gradcam",),
    target: str | None = None,
    targets: Sequence[int | None] | None = None,
    boxes: Sequence[dict[int, np.ndarray] | None] | None = None,
    patients: Sequence[str | None] | None = None,
    placements: Sequence[Placement | None] | None = None,
    faithfulness: bool = True,
    sanity: bool = True,
    layer: str | None = None,
    progress: Progress | None = None,
    curves_dtype: torch.dtype | None = None,
) -> ExplainResult:
    """Explain prepared inputs ``images``: each ``(C, H, W)`` as :meth:`Task.input_array` makes it,
    or for 3D networks ``(C, Z, Y, X)`` windows of the network's grid (``placements`` say where).

    Args:
        target: The target explained in every image (by name); by default each image's
            ``targets`` entry, else what the task explains by default (the most probable).
        boxes: Per image, the true boxes (input pixels) of each target index, for energy in the box.
        faithfulness: Compute deletion and insertion curves (4 x 21 forward passes per map).
        sanity: Run the model randomisation test on the first few images.
        layer: The layer Grad-CAM and Grad-CAM++ read (e.g. ``model.layer3``), by default the last
            spatial feature map (:func:`~medsight.explain.attribution.feature_layer`).
        curves_dtype: The autocast dtype of the deletion and insertion curves' forward passes (they
            read probabilities only), e.g. ``torch.bfloat16`` where the model predicts in it; None
            runs them as the predictor does. Maps and their other checks keep the predictor's.

    Raises:
        ConfigError: an unknown method or target, or a task that cannot be explained.
    """
    chosen = _methods(methods)
    task = predictor.task
    network = ExplainedNetwork(predictor.model, task).eval()
    fixed = None if target is None else network.target_index(target)
    tensors = [torch.from_numpy(np.ascontiguousarray(image, np.float32)) for image in images]
    results: list[ExplainedImage] = []
    seconds = dict.fromkeys(chosen, 0.0)
    for i, (image, name) in enumerate(zip(tensors, names, strict=True)):
        probabilities = network.probabilities(image[None])[0].numpy()
        wanted = targets[i] if targets is not None else None
        k = fixed if fixed is not None else wanted if wanted is not None else task.explain_default(probabilities)
        item = ExplainedImage(name=str(name), patient=None if patients is None else patients[i],
                              image=image.numpy(), target=network.targets[k],
                              probability=float(probabilities[k]))  # fmt: skip
        truth = None if boxes is None or boxes[i] is None else boxes[i].get(k)  # type: ignore[union-attr]
        item.boxes = truth if truth is not None and len(truth) else None
        item.placement = None if placements is None else placements[i]
        for method in chosen:
            start = time.perf_counter()
            found = attribute(network, image[None], k, method, layer=_layer_for(method, layer))[0]
            seconds[method] += time.perf_counter() - start
            item.maps[method] = found
            check: dict[str, Any] = {}
            if faithfulness:

                def target(batch: torch.Tensor, k: int = k) -> torch.Tensor:
                    with autocast(batch.device, curves_dtype):
                        return network.probabilities(batch)[:, k]

                curves = deletion_insertion(target, image, found)
                check |= curves.summary() | {"curves": {"fractions": curves.fractions, "deletion": curves.deletion,
                                                        "insertion": curves.insertion}}  # fmt: skip
            if item.boxes is not None:
                energy = box_energy(found, item.boxes)
                check |= {"energy_in_box": energy.energy, "box_share": energy.chance, "pointing_hit": energy.hit}
            item.checks[method] = check
        results.append(item)
        if progress is not None:
            progress("explaining", i + 1, len(tensors))
    summary = {m: _summary(results, m, seconds[m]) for m in chosen}
    if sanity and results:
        for method in chosen:
            summary[method]["randomisation"] = _randomisation(network, results[:SANITY_IMAGES], method,
                                                              _layer_for(method, layer))  # fmt: skip
        if layer is not None:
            for method in chosen:
                if _layer_for(method, layer):
                    summary[method]["layer"] = layer
    return ExplainResult(results, summary, {"run": str(predictor.run_dir), "recipe": predictor.package.recipe,
                                            "network": predictor.package.model.name})  # fmt: skip


def _layer_for(method: str, layer: str | None) -> str | None:
    """The layer a method reads: Grad-CAM's and Grad-CAM++'s; occlusion and IG read the input."""
    return layer if method in ("gradcam", "gradcampp") else None


def _randomisation(
    network: ExplainedNetwork, items: Sequence[ExplainedImage], method: str, layer: str | None = None
) -> dict[str, Any]:
    """The model randomisation test on ``items``: rank correlation of each map with the map under
    re-drawn weights (a map that vanishes under random weights counts as changed)."""
    shuffled = randomised(network)
    rhos = []
    for item in items:
        k = network.targets.index(item.target)
        again = attribute(shuffled, torch.from_numpy(item.image)[None], k, method, layer=layer)[0]
        rhos.append(rank_correlation(item.maps[method], again))
    finite = [r for r in rhos if np.isfinite(r)]
    mean = float(np.mean(finite)) if finite else float("nan")
    return {"images": len(items), "rank_correlation": rhos, "mean_rank_correlation": mean,
            "changed": bool(not finite or abs(mean) < RANDOMISED_LIMIT)}  # fmt: skip


def _summary(items: Sequence[ExplainedImage], method: str, seconds: float) -> dict[str, Any]:
    """Means over images (with patient-bootstrap CIs for the faithfulness and the box figures)."""
    checks = [item.checks[method] for item in items]
    groups = np.array([item.patient or item.name for item in items], dtype=object)
    out: dict[str, Any] = {"images": len(items), "seconds_per_image": round(seconds / max(len(items), 1), 3)}
    if checks and "faithfulness" in checks[0]:
        for key in ("deletion_auc", "insertion_auc", "deletion_auc_random", "insertion_auc_random"):
            out[key] = float(np.mean([c[key] for c in checks]))
        out["faithfulness"] = bootstrap_ci(np.mean, np.array([c["faithfulness"] for c in checks]), groups=groups,
                                           n_resamples=500)  # fmt: skip
    boxed = [(c, g) for c, g in zip(checks, groups, strict=True) if "energy_in_box" in c]
    if boxed:
        energy = np.array([c["energy_in_box"] for c, _ in boxed], float)
        where = np.isfinite(energy)
        box_groups = np.array([g for _, g in boxed], dtype=object)
        out["boxed_images"] = len(boxed)
        out["energy_in_box"] = (bootstrap_ci(np.mean, energy[where], groups=box_groups[where], n_resamples=500)
                                if where.any() else {"estimate": None, "undefined": "no positive mass"})  # fmt: skip
        out["box_share"] = float(np.mean([c["box_share"] for c, _ in boxed]))
        out["pointing_game"] = bootstrap_ci(np.mean, np.array([c["pointing_hit"] for c, _ in boxed], float),
                                            groups=box_groups, n_resamples=500)  # fmt: skip
    return out


def explain_files(
    predictor: Predictor,
    inputs: Sequence[str | os.PathLike[str]],
    *,
    slice_index: int | None = None,
    target: str | None = None,
    **options: Any,
) -> ExplainResult:
    """:func:`explain` for image files, read as ``medsight predict`` reads them (folders expanded; a
    DICOM series or a case folder of channels is one input). A 3D network is explained on one
    window of its patch size, centred where the whole-volume prediction finds the target most
    probably (by default the target found most probably anywhere).

    Raises:
        InputError: an input is missing or cannot be read or prepared (named).
    """
    groups = predictor.input_files(inputs)
    task = predictor.task
    arrays, targets, placements = [], [], []
    network = ExplainedNetwork(predictor.model, task)
    fixed = None if target is None else network.target_index(target)
    for name, files in groups.items():
        try:
            volume = read_input(name, files)
            if task.spatial_dims == 2:
                arrays.append(task.input_array(volume, predictor.preprocess, slice_index=slice_index))
                targets.append(None)
                placements.append(None)
                continue
            view = task.explain_volume(predictor.model, volume, predictor.preprocess)
        except MedsightError as exc:
            raise type(exc)(str(exc) if str(name) in str(exc) else f"{name}: {exc}") from exc
        k = fixed if fixed is not None else task.explain_default(view.evidence.reshape(len(view.evidence), -1).max(1))
        window, offset = _window(view.image, view.evidence[k], view.patch)
        arrays.append(window)
        targets.append(k)
        placements.append(Placement(offset, tuple(view.image.shape[1:]), view.to_source, volume.geometry))
    return explain(predictor, arrays, [str(p) for p in groups], target=target, targets=targets,
                   placements=placements, **options)  # fmt: skip


def _window(image: np.ndarray, evidence: np.ndarray, patch: Sequence[int]) -> tuple[np.ndarray, tuple[int, ...]]:
    """The ``patch``-sized window of ``image`` ``(C, *grid)`` centred on the strongest ``evidence``
    (kept inside the grid; zero-padded at the end where the grid is smaller), and its corner."""
    centre = np.unravel_index(int(np.argmax(evidence)), evidence.shape)
    offset = tuple(int(np.clip(c - p // 2, 0, max(g - p, 0)))
                   for c, p, g in zip(centre, patch, evidence.shape, strict=True))  # fmt: skip
    window = image[(slice(None), *(slice(o, o + p) for o, p in zip(offset, patch, strict=True)))]
    pad = [(0, 0)] + [(0, p - s) for p, s in zip(patch, window.shape[1:], strict=True)]
    return np.pad(window, pad).astype(np.float32), offset


def explain_split(
    predictor: Predictor,
    manifest: str | os.PathLike[str],
    *,
    split: str = "test",
    cases: int = 16,
    seed: int = 0,
    target: str | None = None,
    **options: Any,
) -> ExplainResult:
    """:func:`explain` for up to ``cases`` cases of a manifest split: cases with boxes of the
    explained target first (then energy in the box and the pointing game are scored), drawn at
    random (``seed``). Without ``target``, a case with boxes is explained for its boxed target the
    model finds most probable.

    Raises:
        InputError: the manifest has no such split, or a case cannot be read.
    """
    predictor.task.explain_targets()  # a task with nothing to explain says so first
    table = Manifest.load(manifest)
    rows = table.table[table.table["split"].astype(str) == split]
    if rows.empty:
        raise InputError(f"{manifest} has no {split!r} cases (splits there: "
                         f"{sorted(set(table.table['split'].astype(str)) - {''})})")  # fmt: skip
    if cases < 1:
        raise ConfigError(f"--cases must be at least 1, got {cases}")
    if predictor.task.spatial_dims == 3:
        return _explain_volumes(predictor, table, rows, cases=cases, seed=seed, target=target, **options)
    if predictor.task.spatial_dims != 2:
        raise ConfigError(f"{type(predictor.task).__name__} explains images; this run's inputs are not images")
    task = predictor.task
    names = task.explain_targets()
    fixed = None if target is None else ExplainedNetwork(predictor.model, task).target_index(target)
    boxed = {}
    for _, row in rows.iterrows():
        case = str(row["case_id"])
        found = {k: task.explain_boxes(row.get("boxes"), case, k) for k in range(len(names))}
        boxed[case] = {k: b for k, b in found.items() if len(b) and (fixed is None or k == fixed)}
    order = np.random.default_rng(seed).permutation(len(rows))
    picked = sorted(order, key=lambda i: not boxed[str(rows.iloc[i]["case_id"])])[:cases]
    arrays, items, prepared, wanted = [], [], [], []
    for i in picked:
        row = rows.iloc[i]
        case = str(row["case_id"])
        volume = read_case_image(table, row, "image")
        arrays.append(task.input_array(volume, predictor.preprocess))
        shape = tuple(int(s) for s in volume.spatial_shape[-2:])
        size = arrays[-1].shape[-1]
        prepared.append({k: boxes_to_prepared(b, shape, size) for k, b in boxed[case].items()})  # type: ignore[arg-type]
        items.append(row)
        wanted.append(None)
    if fixed is None:
        network = ExplainedNetwork(predictor.model, task)
        for j, truth in enumerate(prepared):
            if truth:
                p = network.probabilities(torch.from_numpy(arrays[j])[None])[0].numpy()
                wanted[j] = max(truth, key=lambda k: p[k])
    return explain(predictor, arrays, [str(r["case_id"]) for r in items], target=target, targets=wanted,
                   boxes=prepared, patients=[str(r.get("patient_id", r["case_id"])) for r in items],
                   **options)  # fmt: skip


def _explain_volumes(
    predictor: Predictor,
    table: Manifest,
    rows: pd.DataFrame,
    *,
    cases: int,
    seed: int,
    target: str | None,
    **options: Any,
) -> ExplainResult:
    """3D cases of a manifest split, each explained on one window as :func:`explain_files` does, and
    where the case has a reference (a label map; a detection's findings drawn as balls), scored
    against it on the input's own grid: the share of the map's mass in the target's voxels (against
    the share of the window they fill) and whether its peak lies in them."""
    task = predictor.task
    network = ExplainedNetwork(predictor.model, task)
    fixed = None if target is None else network.target_index(target)
    picked = rows.iloc[np.random.default_rng(seed).permutation(len(rows))[:cases]]
    arrays, targets, placements, truths = [], [], [], []
    for _, row in picked.iterrows():
        case = str(row["case_id"])
        image, labels = task.explain_case(table, row)
        try:
            view = task.explain_volume(predictor.model, image, predictor.preprocess)
        except MedsightError as exc:
            raise type(exc)(f"case {case}: {exc}") from exc
        k = fixed if fixed is not None else task.explain_default(view.evidence.reshape(len(view.evidence), -1).max(1))
        window, offset = _window(view.image, view.evidence[k], view.patch)
        arrays.append(window)
        targets.append(k)
        placements.append(Placement(offset, tuple(view.image.shape[1:]), view.to_source, image.geometry))
        truths.append(None if labels is None else task.explain_mask(labels, k))
    result = explain(predictor, arrays, [str(r["case_id"]) for _, r in picked.iterrows()], target=target,
                     targets=targets, placements=placements,
                     patients=[str(r.get("patient_id", r["case_id"])) for _, r in picked.iterrows()],
                     **options)  # fmt: skip
    scored = False
    for item, truth in zip(result.images, truths, strict=True):
        if truth is None or item.placement is None:
            continue
        region = item.placement.on_source(np.ones(item.image.shape[1:], np.float32)) > 0.5
        for method, found in item.maps.items():
            energy = mask_energy(item.placement.on_source(found), truth, region)
            item.checks[method] |= {"energy_in_box": energy.energy, "box_share": energy.chance,
                                    "pointing_hit": energy.hit}  # fmt: skip
            scored = True
    if scored:  # the summaries again, now with the energy in the reference (what was there stays)
        result.summary = {m: {**block, **_summary(result.images, m, block["seconds_per_image"] * len(result.images))}
                          for m, block in result.summary.items()}  # fmt: skip
    return result


def explain_run(
    run_dir: str | os.PathLike[str],
    manifest: str | os.PathLike[str],
    *,
    split: str = "test",
    cases: int | None = None,
    methods: Sequence[str] = ("gradcam",),
    out: str | os.PathLike[str] | None = None,
) -> Path | None:
    """Explain ``cases`` cases of a run's ``split`` (by default 6 images, or 2 volumes: each takes a
    sliding-window pass and its checks run on a whole window, ~8-11 s on two AVX2 cores) into ``out``
    (default ``RUN/explain``, where the validation report finds them); returns the
    ``explanations.json`` written, or None for a model whose inputs are not images (a risk model of
    features)."""
    predictor = Predictor.from_run(run_dir, precision="fp32", backend="torch")
    if predictor.task.spatial_dims not in (2, 3):
        log.info("%s: a model of features has no images to explain", run_dir)
        return None
    if cases is None:
        cases = 6 if predictor.task.spatial_dims == 2 else 2
    # the faithfulness curves in the precision `medsight predict` uses (bf16 for a 3D model on a CPU with
    # native bf16: half the time of its ~80 passes of a window per map); the maps stay fp32
    result = explain_split(predictor, manifest, split=split, cases=cases, methods=methods,
                           curves_dtype=prediction_dtype(predictor.task, run_dir))  # fmt: skip
    return write_explanations(result, Path(run_dir) / "explain" if out is None else out)


def _file_stem(name: str) -> str:
    stem = Path(name).name
    for suffix in (".nii.gz", ".png", ".jpg", ".jpeg", ".dcm", ".nii", ".mha", ".nrrd"):
        if stem.lower().endswith(suffix):
            return stem[: -len(suffix)]
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem) or "image"


def write_explanations(result: ExplainResult, out: str | os.PathLike[str]) -> Path:
    """Write one overlay PNG per image and method (the input, and the map over it with the true
    boxes in green and the map's peak marked; for 3D, the slice through the peak, and the map on
    the input's own grid as NIfTI), ``maps.npz`` (the raw maps, keyed ``<image>__<method>``) and
    ``explanations.json`` into the folder ``out``; returns the JSON's path."""
    from medsight.explain.overlay import overlay_png

    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} is a file; --out names a folder for the overlays")
    folder.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    records, arrays = [], {}
    for item in result.images:
        stem = _file_stem(item.name)
        while stem in used:
            stem += "_"
        used.add(stem)
        files, volumes = {}, {}
        for method, found in item.maps.items():
            target = "".join(c if c.isalnum() else "_" for c in item.target)
            png = folder / f"{stem}_{method}_{target}.png"
            image, shown, title = item.image, found, f"{method}: {item.target} p={item.probability:.3g}"
            if found.ndim == 3:  # a 3D window: the slice through the map's peak, and the map on the input's grid
                z = int(np.unravel_index(int(np.argmax(found)), found.shape)[0])
                image, shown, title = item.image[:, z], found[z], f"{title} (window slice {z})"
            with atomic_file(png) as tmp:
                overlay_png(image, shown, tmp, boxes=item.boxes, title=title)
            files[method] = png.name
            arrays[f"{stem}__{method}"] = found
            if item.placement is not None:
                nifti = folder / f"{stem}_{method}_{target}.nii.gz"
                write(Volume(item.placement.on_source(found)[None].astype(np.float32), item.placement.geometry),
                      nifti, overwrite=True)  # fmt: skip
                volumes[method] = nifti.name
        record = {"input": item.name, "patient": item.patient, "target": item.target,
                  "probability": round(item.probability, 4), "overlays": files,
                  "boxes": None if item.boxes is None else np.round(item.boxes, 1).tolist(),
                  "checks": item.checks}  # fmt: skip
        if item.placement is not None:
            record |= {"maps": volumes, "window_corner": list(item.placement.offset)}
        records.append(record)
    with atomic_file(folder / "maps.npz") as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    document = {"model": result.model, "methods": result.summary, "images": records}
    target = folder / "explanations.json"
    with atomic_file(target) as tmp:
        Path(tmp).write_text(json.dumps(json_ready(document), indent=1))
    log.info("wrote %d explanation(s) to %s", len(records), folder)
    return target


def summary_table(result: ExplainResult) -> pd.DataFrame:
    """Per method, the figures a reader compares, as estimates only (it prints in 80 columns; the
    CIs are in ``explanations.json``)."""

    def value(block: Any, digits: int = 2) -> str:
        if not isinstance(block, dict) or block.get("estimate") is None:
            return "-"
        return f"{block['estimate']:.{digits}f}"

    rows = []
    for method, s in result.summary.items():
        random = s.get("randomisation", {})
        rho = random.get("mean_rank_correlation", float("nan"))
        rows.append({
            "method": method,
            "faithfulness": value(s.get("faithfulness"), 3),
            "in truth (chance)": (f"{value(s['energy_in_box'])} ({s['box_share']:.2f})" if "energy_in_box" in s
                                else "-"),
            "pointing": value(s.get("pointing_game")),
            "random-weights ρ": "-" if not random else f"{rho:.2f}" if np.isfinite(rho) else "void",
            "s/image": f"{s['seconds_per_image']:.2f}",
        })  # fmt: skip
    return pd.DataFrame(rows)
