"""3D lesion detection on the task seam (lung nodules in CT): candidates as centre (world mm),
diameter and probability, scored with LUNA16's FROC and CPM.

The detector is the self-configured segmentation U-Net (:class:`SegmentationTask`, its plan,
patches, augmentation and sliding windows) trained on dense targets: each annotated finding is
drawn as a ball of its diameter around its centre, in world millimetres, on its scan's own grid
(``annotations_excluded.csv`` findings are drawn as ignored regions, of their diameter or LUNA16's
10 mm where it is unknown: the loss counts neither them nor the voxel around them, as evaluation
counts no candidate on them). The network's per-voxel probability is the heat map; its peaks
become candidates:

- each peak of the map (the highest voxel within 3 mm along each axis) at or above
  ``task.threshold`` is a candidate of that probability; the voxels above the threshold are shared
  between the peaks by watershed, and the voxels of a peak's share at or above half its
  probability give its centre (probability-weighted, world mm) and diameter (of the ball of their
  volume);
- non-maximum suppression in world space: a candidate whose centre lies within the radius of a
  more probable one is dropped; at most ``task.max_candidates`` per scan are kept.

Predictions are LUNA16 ``candidates`` rows (``seriesuid, coordX, coordY, coordZ, probability``,
plus ``diameter_mm``) and, for files, an overlay label map of the candidates at or above
``task.overlay_probability`` drawn as balls on the input's grid.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention
from pydantic import BaseModel
from scipy import ndimage
from torch import nn
from torch.utils.data import Dataset

from medsight.core.errors import ConfigError, InputError, MedsightError
from medsight.core.progress import Progress
from medsight.core.volume import Volume, VolumeMetadata
from medsight.data.cache import built, cache_key, reuse
from medsight.data.manifest import Manifest, parse_boxes
from medsight.data.patches import FindingPatches, PatchDataset
from medsight.data.reading import read_case_image
from medsight.data.volume_cache import IGNORE_INDEX
from medsight.io.api import write
from medsight.io.atomic import atomic_dir
from medsight.metrics.detection import (
    excluded_diameters,
    froc_summary,
    label_candidates,
    match_nodules,
    size_summary,
)
from medsight.models.registry import ModelChoice
from medsight.planning import Plan
from medsight.tasks.base import Task, TaskData, Training, VolumeView, as_model, register_task
from medsight.tasks.candidates import Candidates, DetectionSpec, draw_balls, find_candidates
from medsight.tasks.rescoring import candidate_features, fit_rescoring
from medsight.tasks.results import Estimate, Finding, Prediction
from medsight.tasks.segmentation import (
    PlanRequest,
    SegmentationSpec,
    SegmentationTask,
    sliding_window,
    supervised_heads,
)

__all__ = [
    "DetectionSpec",
    "DetectionTask",
    "draw_balls",
    "find_candidates",
    "finding_weights",
    "margin_mask",
    "widen_ignored",
]

log = logging.getLogger(__name__)

_TARGETS_VERSION = 3  # 2: excluded findings drawn as ignored regions; 3: of LUNA16's size rule (metrics.detection)
_IGNORED = 2  # the code of an excluded finding in the drawn targets (the backbone's ignore label)
_PRIOR = 0.01  # the finding's probability everywhere in an untrained network
_JITTER = 0.75  # training findings lie anywhere in this central share of their patch
_MIN_SHARE = 1e-3  # the focal loss's divisor is at least this share of a batch's voxels
CANDIDATE_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "probability", "diameter_mm"]


def _findings(boxes: Sequence[Any], case: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres (world mm), diameters and whether excluded, of a case's findings."""
    centres, diameters, excluded = [], [], []
    for n, box in enumerate(boxes):
        try:
            centre = [float(v) for v in box["center"]]
            diameter = float(box["diameter_mm"])
        except (KeyError, TypeError, ValueError, IndexError):
            raise InputError(
                f"case {case}: finding {n + 1} is {box!r}; a 3D finding needs center [x, y, z] (world mm) "
                "and diameter_mm, as the luna16 adapter writes them"
            ) from None
        is_excluded = bool(box.get("excluded", False))
        if len(centre) != 3 or not np.all(np.isfinite(centre)) or not np.isfinite(diameter):
            raise InputError(f"case {case}: finding {n + 1} has centre {centre} and diameter {diameter}")
        if diameter <= 0 and not is_excluded:
            raise InputError(f"case {case}: finding {n + 1} has diameter {diameter} mm; a nodule needs a positive one")
        centres.append(centre)
        diameters.append(diameter)
        excluded.append(is_excluded)
    return np.asarray(centres, float).reshape(-1, 3), np.asarray(diameters, float), np.asarray(excluded, bool)


def _targets(manifest: Manifest, folder: Path, *, progress: Progress | None) -> Manifest:
    """The manifest with a ``label`` column: per case, its findings drawn as balls on its scan's grid
    (written once into ``folder``, reused while the scans and findings are unchanged)."""
    if "boxes" not in manifest.table.columns:
        raise InputError("the manifest has no boxes column: detection learns from each case's findings "
                         "(the luna16 adapter writes them from annotations.csv)")  # fmt: skip
    boxes = manifest.table["boxes"].fillna("").astype(str).tolist()
    spec = {"version": _TARGETS_VERSION, "boxes": boxes}
    key = cache_key(manifest, ["image"], spec)

    def opened(path: Path) -> list[str]:
        return json.loads((path / "index.json").read_text())["files"]

    files = reuse(folder, key, opened)
    if files is None:
        folder.parent.mkdir(parents=True, exist_ok=True)
        files = []
        with atomic_dir(folder, overwrite=True) as tmp:
            for n, (_, row) in enumerate(manifest.table.iterrows()):
                case = str(row["case_id"])
                centres, diameters, excluded = _findings(parse_boxes(row["boxes"], case), case)
                try:
                    image = read_case_image(manifest, row, "image")
                except MedsightError as exc:
                    raise InputError(f"case {case}: cannot read {row['image']}: {exc}") from exc
                drawn = draw_balls(image.geometry, image.spatial_shape, centres[~excluded], diameters[~excluded])
                if (~excluded).any() and not drawn.any():
                    log.warning("case %s: none of its findings lies on its scan's grid (are they in world mm?)", case)
                if excluded.any():  # ignored where no finding is drawn (evaluation ignores them too)
                    sizes = excluded_diameters(diameters[excluded])
                    ignored = draw_balls(image.geometry, image.spatial_shape, centres[excluded], sizes, value=_IGNORED)
                    drawn = np.where(drawn > 0, drawn, ignored)
                name = f"target_{n}.nii.gz"
                write(Volume(drawn[None], image.geometry, VolumeMetadata(modality="SEG")), tmp / name)
                files.append(str(folder / name))
                if progress is not None:
                    progress("drawing the findings on each scan", n + 1, len(manifest))
            (tmp / "index.json").write_text(json.dumps({"key": key, "files": files}))
        files = built(folder, key, opened)  # still this build's: not another process's of other scans
    table = manifest.table.copy()
    table["label"] = files
    return manifest.with_table(table)


@register_task
class DetectionTask(Task):
    """Detection of findings as balls in world space (see the module's description)."""

    spec_type = DetectionSpec
    preprocess_type = PlanRequest
    package_preprocess_type: ClassVar[type[BaseModel] | None] = Plan
    preprocess_file: ClassVar[str | None] = "plan.json"
    fits_on_validation: ClassVar[bool] = False

    def __init__(self, spec: DetectionSpec) -> None:
        self._spec = spec
        self.found = Candidates(spec)  # outputs -> candidates, overlays and findings, shared with the runtime
        backbone = SegmentationSpec(kind="segmentation", labels={spec.finding: 1}, overlap=spec.overlap,
                                    mirror=spec.mirror, ignore=_IGNORED)  # fmt: skip
        self.backbone = SegmentationTask(backbone)

    @property
    def spec(self) -> DetectionSpec:
        return self._spec

    @property
    def stratify_by(self) -> str | None:
        return None

    @property
    def spatial_dims(self) -> int:
        return 3

    # --- data: the backbone's, on the drawn targets -----------------------------------------
    def cache_spec(self, preprocess: BaseModel) -> BaseModel | None:
        """None: the drawn targets and the backbone's volume cache key their own subfolders."""
        return None

    def prepare(
        self, manifest: Manifest, preprocess: BaseModel, folder: str | os.PathLike[str], *, progress: Progress | None
    ) -> TaskData:
        """Draw each case's findings on its scan, then plan (unless given a plan) and preprocess."""
        with_targets = _targets(manifest, Path(folder) / "targets", progress=progress)
        if isinstance(preprocess, Plan):
            preprocess = preprocess.model_copy(update={"keep_findings": True})
        else:  # every finding keeps a voxel on the plan's grid, however coarse
            request = as_model(preprocess, PlanRequest)
            preprocess = request.model_copy(update={"overrides": {**request.overrides, "keep_findings": True}})
        return self.backbone.prepare(with_targets, preprocess, folder, progress=progress)

    def check(self, data: TaskData, splits: Mapping[str, np.ndarray]) -> None:
        self.backbone.check(data, splits)

    def dataset(self, data: TaskData, indices: np.ndarray) -> Dataset:
        return self.backbone.dataset(data, indices)

    def training(self, data: TaskData, indices: np.ndarray, *, balance: str, augment: BaseModel, seed: int) -> Training:
        """The backbone's augmentation with this task's loss and patches: each finding of the
        training scans is equally likely to be in a foreground patch (:class:`FindingPatches`: drawn
        by voxel, a 30 mm nodule would be shown a thousand times as often as a 4 mm one), anywhere
        in the central 3/4 of it, not at its centre (a detector trained on centred findings misses
        them off-centre, where a sliding window shows most of them)."""
        training = self.backbone.training(data, indices, balance=balance, augment=augment, seed=seed)
        patches: PatchDataset = training.train_set  # type: ignore[assignment]
        findings = FindingPatches(patches.cache, patches.items, patches.patch, patches.samples, patches.oversample,
                                  jitter=_JITTER, seed=seed)  # fmt: skip
        log.info("training patches: %d findings in %d scans, each as likely as the next", len(findings.findings),
                 len(findings.items))  # fmt: skip
        return replace(training, loss=self.loss, train_set=findings)

    def label_classes(self) -> tuple[tuple[int, str], ...]:
        return self.found.label_classes()  # the overlay's balls

    def example_input(self, preprocess: BaseModel, in_channels: int) -> torch.Tensor:
        return self.backbone.example_input(preprocess, in_channels)

    def network(self, model: ModelChoice, in_channels: int, preprocess: BaseModel) -> nn.Module:
        """The backbone's U-Net, its output layers starting at a finding probability of 1 % (as
        RetinaNet starts its classifier: otherwise the background's loss swamps the findings' at
        the start of training)."""
        net = self.backbone.network(model, in_channels, preprocess)
        prior = float(np.log(_PRIOR / (1 - _PRIOR)))
        with torch.no_grad():
            for module in net.modules():
                output = isinstance(module, nn.Conv3d | nn.ConvTranspose3d) and module.out_channels == 2
                if output and module.bias is not None:
                    module.bias.copy_(torch.tensor([0.0, prior]))
        return net

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Focal loss on the finding's log-odds (``gamma`` 2), summed and divided by the finding
        voxels of the batch (as RetinaNet divides by its positive anchors; at least a thousandth of
        the batch's voxels), plus the soft Dice of the finding. Within the finding voxels each
        finding weighs the same (:func:`finding_weights`): voxel by voxel, a 30 mm nodule would
        outweigh a 4 mm one a thousand times. Deep-supervision outputs weigh their heads by
        halves, as segmentation does. Excluded findings (ignored voxels) and the voxels touching them
        count for nothing."""
        if outputs.shape[0] != targets.shape[0] or outputs.shape[-3:] != targets.shape[1:]:
            raise InputError(f"outputs {tuple(outputs.shape)} do not match target patches {tuple(targets.shape)}")
        targets = widen_ignored(targets)
        ignored = targets == IGNORE_INDEX
        findings = targets.masked_fill(ignored, 0)
        weights = finding_weights(findings).to(outputs.device)
        scored = (margin_mask(findings, self.spec.margin).to(targets.device) & ~ignored).to(outputs.device)
        return supervised_heads(lambda out, truth: self._loss(out, truth, weights, scored), outputs, findings)

    @staticmethod
    def _loss(
        outputs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, scored: torch.Tensor
    ) -> torch.Tensor:
        logit = outputs[:, 1] - outputs[:, 0]  # the finding's log-odds under the two-class softmax
        truth = (targets > 0).to(logit.dtype)
        probability = torch.sigmoid(logit) * scored.to(logit.dtype)  # the margin counts for nothing
        entropy = F.binary_cross_entropy_with_logits(logit, truth, reduction="none")
        missed = truth * (1 - probability) + (1 - truth) * probability
        # over the finding voxels, or a thousandth of the batch where they are fewer: a patch that
        # grazes a 3 mm nodule must not weigh its background a hundred times more than the next
        weight = torch.where(truth > 0, weights.to(logit.dtype), scored.to(logit.dtype))
        focal = (weight * entropy * missed**2).sum() / truth.sum().clamp_min(max(1.0, _MIN_SHARE * truth.numel()))
        overlap = (probability * truth).sum()
        dice = (2 * overlap + 1e-5) / (probability.sum() + truth.sum() + 1e-5)
        return focal + (1 - dice)

    def score(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return self.backbone.score(outputs, widen_ignored(targets))

    def metric_names(self) -> tuple[str, ...]:
        return self.backbone.metric_names()

    def scores(self, outputs: torch.Tensor) -> pd.DataFrame:
        return self.backbone.scores(outputs)

    # --- predictions ------------------------------------------------------------------------
    def _probability(self, logits: torch.Tensor, case: Any) -> np.ndarray:
        """The finding's probability on the source grid from logits on the preprocessed grid."""
        return self.found.probability(logits.float().numpy(), case)

    @staticmethod
    def _row(candidates: pd.DataFrame) -> dict[str, Any]:
        return Candidates.row(candidates)

    def predict_split(
        self, model: nn.Module, data: TaskData, indices: np.ndarray, *, batch_size: int = 64
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Per scan of the rows: its candidates (sliding windows over the whole preprocessed scan)."""
        plan: Plan = data.preprocess  # type: ignore[assignment]
        cases, rows = [], []
        for entry, row, logits, reference in self.backbone._predicted(model, data, indices):
            candidates = self.found.proposed(self._probability(logits, entry), reference.geometry, plan.rescoring)
            if plan.rescoring is not None:
                image = read_case_image(data.manifest, row, "image")
                candidates = self.found.kept(candidates, np.asarray(image.array[0]), image.geometry, plan.rescoring)
            cases.append(row.to_dict())
            rows.append(self._row(candidates))
        return pd.DataFrame(cases), pd.DataFrame(rows)

    def settle(
        self, model: nn.Module, data: TaskData, indices: np.ndarray, *, progress: Progress | None = None
    ) -> BaseModel:
        """The backbone's postprocessing is not used (candidates come from peaks); with
        ``task.rescore``, the second stage (:mod:`medsight.tasks.rescoring`) fitted on the candidates
        of the validation scans and of ``task.rescore_training_scans`` training scans, each labelled
        by whether it lies within a finding (those on excluded findings but on no finding are left
        out, as LUNA16 ignores them). Returns the plan with it (without it where too few candidates
        lie on a finding, or off one)."""
        plan: Plan = data.preprocess  # type: ignore[assignment]
        plan = plan.model_copy(update={"rescoring": None})
        if not self.spec.rescore or len(indices) == 0:
            return plan
        # the network is surer of its training scans, yet their findings taught the stage more than it lost
        # (lung phantom, 45 test scans: CPM 0.385 without the stage, 0.484 fitted on 38 validation scans,
        # 0.51-0.53 with 40 training scans added, 0.542 with all 217)
        training = data.indices("train")
        extra = min(self.spec.rescore_training_scans, len(training))
        chosen = np.random.default_rng(0).choice(training, size=extra, replace=False) if extra else training[:0]
        indices = np.concatenate([np.asarray(indices, int), np.sort(chosen)])
        features, labels, sizes = [], [], []
        total = len(data.inputs.items_of(indices))
        for done, (entry, row, logits, reference) in enumerate(self.backbone._predicted(model, data, indices), 1):
            candidates = self.found.candidates(self._probability(logits, entry), reference.geometry,
                                               count=self.spec.proposals)  # what the stage will score  # fmt: skip
            case = str(row.get("case_id", "?"))
            centres, diameters, excluded = _findings(parse_boxes(row.get("boxes", ""), case), case)
            points = candidates[["coordX", "coordY", "coordZ"]].to_numpy(float)
            hits, on_excluded = label_candidates(points, centres[~excluded], diameters[~excluded], centres[excluded],
                                                 diameters[excluded])  # fmt: skip
            hit = hits.any(axis=1)
            ignored = on_excluded & ~hit
            image = read_case_image(data.manifest, row, "image")
            features.append(candidate_features(np.asarray(image.array[0]), image.geometry, candidates)[~ignored])
            labels.append(hit[~ignored])
            sizes.append(_hit_diameters(points, hits, centres[~excluded], diameters[~excluded])[~ignored])
            if progress is not None:
                progress("fitting the candidates' second stage", done, total)
        fitted = fit_rescoring(np.concatenate(features), np.concatenate(labels), np.concatenate(sizes))
        if fitted is not None:
            log.info("candidates rescored by a second stage fitted on %d candidates (%d on findings) of %d validation "
                     "and %d training scans", fitted.candidates, fitted.findings, total - extra, extra)  # fmt: skip
        return plan.model_copy(update={"rescoring": fitted})

    def predict_volumes(
        self, model: nn.Module, volumes: Sequence[Volume], preprocess: BaseModel, *, slice_index: int | None = None
    ) -> tuple[pd.DataFrame, list[Volume] | None]:
        """Candidates of each scan, and an overlay on its grid: the candidates at or above
        ``overlay_probability`` drawn as balls of their diameter."""
        plan = preprocess if isinstance(preprocess, Plan) else None
        if plan is None:
            raise ConfigError("the model package holds no plan; train it again")
        model = model.eval()

        def window(image: np.ndarray) -> np.ndarray:
            return sliding_window(model, image, plan, overlap=self.spec.overlap, mirror=self.spec.mirror).numpy()

        rows, overlays = [], []
        for volume in volumes:
            row, overlay = self.found.detect(volume, plan, window)
            rows.append(row)
            overlays.append(overlay)
        return pd.DataFrame(rows), overlays

    def findings(self, row: Mapping[str, Any]) -> list[Finding]:
        """The row's candidates at or above ``overlay_probability`` (:meth:`Candidates.findings`)."""
        return self.found.findings(row)

    # --- explanations -----------------------------------------------------------------------
    def explain_targets(self) -> tuple[str, ...]:
        return (self.spec.finding,)

    def explain_case(self, manifest: Manifest, row: pd.Series) -> tuple[Volume, np.ndarray | None]:
        """The scan, and its findings drawn as balls of their diameter on its grid (the excluded ones
        left out); no reference where the manifest has no boxes column."""
        case = str(row.get("case_id", "?"))
        image = read_case_image(manifest, row, "image")
        if "boxes" not in manifest.table.columns:
            return image, None
        centres, diameters, excluded = _findings(parse_boxes(row["boxes"], case), case)
        return image, draw_balls(image.geometry, image.spatial_shape, centres[~excluded], diameters[~excluded])

    def explain_mask(self, labels: np.ndarray, target: int) -> np.ndarray | None:
        """The voxels of the case's findings (:meth:`explain_case`)."""
        return np.asarray(labels) == 1

    def explain_logits(self, outputs: torch.Tensor) -> torch.Tensor:
        """The finding's most probable voxel, as log-odds (two-class softmax)."""
        logit = outputs[:, 1].float() - outputs[:, 0].float()
        return logit.flatten(1).amax(1, keepdim=True)

    def explain_volume(self, model: nn.Module, volume: Volume, preprocess: BaseModel) -> VolumeView:
        return self.backbone.explain_volume(model, volume, preprocess)

    def grouped(self, table: pd.DataFrame, fitted: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
        """The candidates of every scan as LUNA16 rows (``seriesuid``: the case id, else the input
        file's name without its extension)."""
        return {"candidates": candidate_table(table)}

    def evaluate(
        self, val: Prediction, test: Prediction, *, split: str, operating_points: Sequence[str], bootstrap: int
    ) -> tuple[dict[str, Estimate], dict[str, Any], list[str]]:
        """LUNA16 FROC of the split's scans: CPM and sensitivity at each rate of false positives per
        scan, with CIs resampling patients' scans."""
        cases = test.cases.reset_index(drop=True)
        candidates = candidate_table(test.table())
        nodules, excluded = [], []
        for _, row in cases.iterrows():
            case = str(row["case_id"])
            centres, diameters, is_excluded = _findings(parse_boxes(row.get("boxes"), case), case)
            for centre, diameter, other in zip(centres, diameters, is_excluded, strict=True):
                (excluded if other else nodules).append([str(row["case_id"]), *centre, diameter])
        columns = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
        scans = cases["case_id"].astype(str).tolist()
        entries = match_nodules(candidates, pd.DataFrame(nodules, columns=columns),
                                pd.DataFrame(excluded, columns=columns), scans=scans)  # fmt: skip
        by_patient = dict(zip(scans, cases["patient_id"].astype(str), strict=True))
        # how big: each detected nodule's diameter against its most probable hit's (read off the same matching)
        sizes = entries.sizes()
        entries = replace(entries, scan=np.array([by_patient[s] for s in entries.scan], dtype=object))
        summary = froc_summary(entries, rates=self.spec.rates, bootstrap=bootstrap)
        figures = {"cpm": Estimate.of(summary["cpm"])}
        for rate, result in summary["sensitivity"].items():
            figures[f"sensitivity @ {rate} fp/scan"] = Estimate.of(result)
        summary["sizes"] = size_summary(sizes, groups=[by_patient[s] for s in sizes["seriesuid"]],
                                        bootstrap=bootstrap)  # fmt: skip
        figures["diameter error % (median)"] = Estimate.of(summary["sizes"]["error_pct"])
        figures["diameter bias % (median)"] = Estimate.of(summary["sizes"]["bias_pct"])
        warnings = []
        if summary["findings"] == 0:
            warnings.append(f"the {split} split has no {self.spec.finding} to detect: FROC and CPM are undefined")
        for message in warnings:
            log.warning(message)
        return figures, {"froc": summary}, warnings


def _hit_diameters(points: np.ndarray, hits: np.ndarray, centres: np.ndarray, diameters: np.ndarray) -> np.ndarray:
    """Per candidate (world mm ``points``, ``hits`` on findings ``(candidates, findings)``), the
    diameter of the nearest finding it lies within; NaN where it lies within none."""
    out = np.full(len(points), np.nan)
    if hits.size == 0:
        return out
    distance = np.linalg.norm(points[:, None, :] - np.asarray(centres, float)[None], axis=-1)
    nearest = np.argmin(np.where(hits, distance, np.inf), axis=1)
    on = hits.any(axis=1)
    out[on] = np.asarray(diameters, float)[nearest[on]]
    return out


def widen_ignored(targets: torch.Tensor) -> torch.Tensor:
    """Target patches ``(N, Z, Y, X)`` with the background touching an ignored region (an excluded
    finding, :data:`~medsight.transforms.volume3d.IGNORE_INDEX`) ignored too: the finding's blob in
    the image is wider than the ball drawn for it."""
    ignored = targets == IGNORE_INDEX
    if not ignored.any():
        return targets
    near = F.max_pool3d(ignored[:, None].float(), 3, stride=1, padding=1)[:, 0] > 0
    return targets.masked_fill(near & (targets == 0), IGNORE_INDEX)


def margin_mask(targets: torch.Tensor, margin: int) -> torch.Tensor:
    """Per voxel of target patches ``(N, Z, Y, X)``: False on the background within ``margin``
    voxels (along each axis) of a finding, True elsewhere. The loss leaves that shell out: where a
    4 mm nodule is one voxel of the target but looks like a blob of eight, its other seven are not
    taught as background."""
    truth = (targets > 0).float()
    if margin <= 0:
        return torch.ones(truth.shape, dtype=torch.bool)
    near = F.max_pool3d(truth[:, None], 2 * margin + 1, stride=1, padding=margin)[:, 0] > 0
    return ~near | (truth > 0)


def finding_weights(targets: torch.Tensor) -> torch.Tensor:
    """Per voxel of target patches ``(N, Z, Y, X)``: at the finding voxels, ``positives / (findings
    x size of its finding)``, so each finding (a 26-connected region of a patch) weighs the same and
    the weights sum to the finding voxels, as unweighted ones do; 0 elsewhere."""
    truth = (targets > 0).cpu().numpy()
    out = np.zeros(truth.shape, np.float32)
    for n, patch in enumerate(truth):
        regions, count = ndimage.label(patch, structure=np.ones((3, 3, 3), bool))
        if count:
            sizes = np.bincount(regions.ravel())[1:].astype(np.float32)
            out[n] = np.concatenate([[0.0], 1.0 / sizes])[regions]
    found = float(out.sum())
    if found > 0:
        out *= truth.sum() / found
    return torch.from_numpy(out)


def candidate_table(table: pd.DataFrame) -> pd.DataFrame:
    """LUNA16 candidate rows of a predictions table (its ``candidate_list`` JSON per scan)."""
    if "candidate_list" not in table:
        raise InputError("the predictions hold no candidate_list column; they are not a detection model's")
    rows = []
    for _, row in table.iterrows():
        if "case_id" in row and pd.notna(row["case_id"]):
            uid = str(row["case_id"])
        else:
            name = Path(str(row.get("input", ""))).name
            uid = name.split(".mhd")[0].split(".nii")[0].split(".nrrd")[0].split(".mha")[0]
        for candidate in json.loads(row["candidate_list"]):
            rows.append([uid, candidate["coordX"], candidate["coordY"], candidate["coordZ"], candidate["probability"],
                         candidate["diameter_mm"]])  # fmt: skip
    return pd.DataFrame(rows, columns=CANDIDATE_COLUMNS)
