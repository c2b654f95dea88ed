"""3D segmentation on the task seam: a self-configured U-Net trained on patches, predicting whole
volumes by Gaussian-weighted sliding windows, its label maps returned on each input's own grid.

Labels are trained as mutually exclusive classes (softmax, Dice + cross-entropy) or, when the
recipe names ``regions`` (BraTS: WT, TC, ET as unions of labels), as one sigmoid per region
(Dice + binary cross-entropy). The preprocessing is a :class:`~medsight.planning.Plan`, made from
the data set's fingerprint at training time unless the recipe gives one.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import nn
from torch.utils.data import Dataset

from medsight.core.errors import ConfigError, InputError
from medsight.core.progress import Progress
from medsight.core.volume import Volume
from medsight.data.cases import fingerprint_manifest, pairings, read_case
from medsight.data.manifest import Manifest
from medsight.data.patches import PatchDataset, ValidationPatches
from medsight.data.reading import read_case_image
from medsight.data.volume_cache import IGNORE_INDEX, VolumeCache, build_volume_cache, preprocess_for_plan
from medsight.metrics.agreement import bland_altman, mean_absolute_error
from medsight.metrics.bootstrap import bootstrap_ci
from medsight.metrics.segmentation import dice, lesion_wise, surface_scores
from medsight.models.registry import ModelChoice
from medsight.planning import Plan, make_plan, read_plan
from medsight.tasks.base import Task, TaskData, Training, VolumeView, as_model, register_task
from medsight.tasks.labelmaps import (
    CardiacSpec,
    LabelMaps,
    SegmentationSpec,
    channel_files,
    cine_function,
    ventricular_function,
)
from medsight.tasks.results import Estimate, Prediction
from medsight.transforms.batch3d import BatchAugmenter3D
from medsight.transforms.volume3d import restore

__all__ = [
    "CardiacSpec",
    "PlanRequest",
    "SegmentationSpec",
    "SegmentationTask",
    "cardiac_function",
    "cine_function",
    "sliding_window",
    "supervised_heads",
]

log = logging.getLogger(__name__)


class PlanRequest(BaseModel):
    """A segmentation recipe's ``preprocess`` section: use a plan file, or plan from the data.

    Attributes:
        plan: A ``plan.json`` made by ``medsight plan`` (the data is not fingerprinted again).
        memory_gb: Memory a training step may take when planning.
        modality: ``CT`` or ``MR`` (default: from the images).
        base_filters: U-Net filters at full resolution.
        overrides: Plan fields to replace after planning (``{"patch_size": [64, 64, 64]}``).
    """

    model_config = ConfigDict(extra="forbid")
    plan: str | None = None
    memory_gb: float = Field(8.0, gt=0)
    modality: str | None = None
    base_filters: int = Field(32, ge=1)
    overrides: dict[str, Any] = {}

    @field_validator("overrides")
    @classmethod
    def _plan_fields(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        """Every key names a plan field, checked when the recipe is read: a typo must not wait for
        the fingerprint of every scan (minutes) to be found."""
        unknown = _unknown_keys(overrides, Plan)
        if unknown:
            key, known = unknown[0]
            close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"unknown key {key!r} ({hint}a plan's fields there: {', '.join(known)})")
        return overrides


def _unknown_keys(changes: Mapping[str, Any], model: type[BaseModel], prefix: str = "") -> list[tuple[str, list[str]]]:
    """The dotted keys of ``changes`` that ``model`` (and the models of its fields) has no field for,
    each with the fields known at that level."""
    unknown: list[tuple[str, list[str]]] = []
    for key, value in changes.items():
        field = model.model_fields.get(str(key))
        if field is None:
            unknown.append((f"{prefix}{key}", list(model.model_fields)))
            continue
        inner = field.annotation
        if isinstance(value, Mapping) and isinstance(inner, type) and issubclass(inner, BaseModel):
            unknown += _unknown_keys(value, inner, f"{prefix}{key}.")
    return unknown


def supervised_heads(
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], outputs: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """``loss`` of the outputs; deep-supervision outputs ``(N, heads, C, ...)`` weigh head ``i`` by
    ``2**-i`` (normalised to sum 1; head 0 is the full-resolution output), as nnU-Net does."""
    if outputs.ndim != targets.ndim + 2:
        return loss(outputs, targets)
    weights = [0.5**i for i in range(outputs.shape[1])]
    return sum(w / sum(weights) * loss(outputs[:, i], targets) for i, w in enumerate(weights))  # type: ignore[return-value]


def _merged(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merged(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) else value
    return out


def sliding_window(
    model: nn.Module, image: np.ndarray, plan: Plan, *, overlap: float = 0.5, mirror: bool = False
) -> torch.Tensor:
    """Network outputs (logits) over a whole preprocessed volume ``(C, Z, Y, X)``: Gaussian-weighted
    patches of the plan's size, ``plan.batch_size`` at a time; averaged over the 8 mirrorings when
    ``mirror``."""
    from monai.inferers import sliding_window_inference

    inputs = torch.from_numpy(np.array(image, dtype=np.float32))[None]  # a copy: caches are read-only maps
    flips: list[tuple[int, ...]] = [()]
    if mirror:
        flips = [tuple(a for a in (2, 3, 4) if mask >> (a - 2) & 1) for mask in range(8)]
    total = None
    with torch.no_grad():
        for axes in flips:
            flipped = inputs.flip(axes) if axes else inputs
            out = sliding_window_inference(flipped, roi_size=plan.patch_size, sw_batch_size=plan.batch_size,
                                           predictor=model, overlap=overlap, mode="gaussian")  # fmt: skip
            out = out.flip(axes) if axes else out
            total = out if total is None else total + out
    return (total / len(flips))[0].float()  # type: ignore[operator]


@register_task
class SegmentationTask(Task):
    """Segmentation of label maps (see the module's description)."""

    spec_type = SegmentationSpec
    preprocess_type = PlanRequest
    package_preprocess_type: ClassVar[type[BaseModel] | None] = Plan
    preprocess_file: ClassVar[str | None] = "plan.json"
    fits_on_validation: ClassVar[bool] = False  # postprocessing is settled on val when training ends

    def __init__(self, spec: SegmentationSpec) -> None:
        self._spec = spec
        self.maps = LabelMaps(spec)  # outputs -> label maps and figures, shared with the torch-free runtime
        self.codes, self.painting = self.maps.codes, self.maps.painting
        # the structures that are learnt, scored and reported: regions, else the labels
        self.structures, self.regions = self.maps.structures, self.maps.regions

    @property
    def spec(self) -> SegmentationSpec:
        return self._spec

    @property
    def stratify_by(self) -> str | None:
        return None

    @property
    def spatial_dims(self) -> int:
        return 3

    @property
    def out_channels(self) -> int:
        return len(self.structures) if self.regions else len(self.codes) + 1

    # --- data -------------------------------------------------------------------------------
    def plan_for(self, manifest: Manifest, request: PlanRequest, *, progress: Progress | None = None) -> Plan:
        """The plan the request names, or one made from the training cases' fingerprint."""
        if request.plan:
            plan = read_plan(request.plan)
        else:
            train = manifest.table["split"] == "train"
            rows = manifest.with_table(manifest.table[train]) if train.any() else manifest
            found = fingerprint_manifest(rows, modality=request.modality, progress=progress, ignore=self.spec.ignore)
            plan = make_plan(found, out_channels=self.out_channels, memory_gb=request.memory_gb,
                             base_filters=request.base_filters)  # fmt: skip
        if request.overrides:
            try:
                plan = Plan.model_validate(_merged(plan.model_dump(mode="json"), request.overrides))
            except ValidationError as exc:
                problem = " ".join(str(exc).split())[:300]
                raise ConfigError(f"preprocess.overrides make an invalid plan: {problem}") from None
        return plan

    def cache_spec(self, preprocess: BaseModel) -> BaseModel | None:
        """None: the volume cache's subfolder is the plan's preprocessing key (:meth:`prepare`)."""
        return None

    def prepare(
        self, manifest: Manifest, preprocess: BaseModel, folder: str | os.PathLike[str], *, progress: Progress | None
    ) -> TaskData:
        """Plan (unless given a plan) and preprocess every labelled image into a volume cache."""
        if isinstance(preprocess, Plan):
            plan = preprocess
        else:
            plan = self.plan_for(manifest, as_model(preprocess, PlanRequest), progress=progress)
        if not plan.channel_names:
            columns = pairings(manifest)[0].images
            names = [c.removeprefix("image_") for c in columns]  # image_t1 -> t1; a lone image column: image
            plan = plan.model_copy(update={"channel_names": names})
        # a task that ignores a code keeps a cache of its own (else it and one that does not would
        # rebuild the shared folder in turn)
        name = plan.preprocessing_key() + (f"-ignore{self.spec.ignore}" if self.spec.ignore is not None else "")
        cache = build_volume_cache(manifest, plan, self.codes, Path(folder) / name, progress=progress,
                                   ignore=self.spec.ignore)  # fmt: skip
        return TaskData(manifest, cache, np.zeros(len(manifest), np.float32), plan, plan.in_channels)

    def check(self, data: TaskData, splits: Mapping[str, np.ndarray]) -> None:
        cache: VolumeCache = data.inputs
        for split, rows in splits.items():
            items = cache.items_of(rows)
            if not items:
                raise InputError(f"the {split} split has no labelled image; every split needs label maps")
            if split == "train" and not any(len(w) for i in items for w in cache.items[i].locations.values()):
                raise InputError("no training label map holds any foreground: there is nothing to learn")

    def dataset(self, data: TaskData, indices: np.ndarray) -> Dataset:
        cache: VolumeCache = data.inputs
        return ValidationPatches(cache, cache.items_of(indices), data.preprocess.patch_size)  # type: ignore[attr-defined]

    def training(self, data: TaskData, indices: np.ndarray, *, balance: str, augment: BaseModel, seed: int) -> Training:
        """Random patches (foreground oversampled as the plan says), augmented on the device."""
        if balance != "none":
            raise ConfigError("segmentation balances classes by foreground oversampling (the plan); use balance: none")
        plan: Plan = data.preprocess  # type: ignore[assignment]
        cache: VolumeCache = data.inputs
        samples = plan.iterations_per_epoch * plan.batch_size
        train_set = PatchDataset(cache, cache.items_of(indices), plan.patch_size, samples,
                                 plan.foreground_oversampling)  # fmt: skip
        spec = plan.augmentation
        augmenter = BatchAugmenter3D(
            spacing=plan.spacing, thick_axis=plan.anisotropic_axis, rotation_p=spec.rotation_p,
            rotation_degrees=spec.rotation_degrees, scale_p=spec.scale_p, scale_range=spec.scale_range,
            elastic_p=spec.elastic_p, flip_p=spec.flip_p, blur_p=spec.blur_p, bias_field_p=spec.bias_field_p,
            gamma_p=spec.gamma_p, noise_p=spec.noise_p,
        )  # fmt: skip
        return Training(loss=self.loss, train_set=train_set, augment_batch=augmenter, batch_size=plan.batch_size,
                        epochs=plan.epochs)  # fmt: skip

    # --- network ----------------------------------------------------------------------------
    def label_classes(self) -> tuple[tuple[int, str], ...]:
        return self.maps.label_classes()

    def example_input(self, preprocess: BaseModel, in_channels: int) -> torch.Tensor:
        """A sliding window of the plan's patch (every window is that size; smaller images are padded)."""
        if not isinstance(preprocess, Plan):
            raise ConfigError("the segmentation network is shaped by a plan; none was made")
        return torch.zeros(1, in_channels, *preprocess.patch_size)

    def network(self, model: ModelChoice, in_channels: int, preprocess: BaseModel) -> nn.Module:
        """The network the plan shapes (``model.name``): ``dynunet`` (MONAI DynUNet, nnU-Net's U-Net,
        instance norm; the default), ``unet`` (MONAI's residual U-Net with the plan's filters and
        strides) or ``segresnet`` (MONAI SegResNet, the plan's first width, one level per plan level
        up to four; it halves every axis at each level, so the patch must allow that). With the
        plan's ``network.deep_supervision`` (DynUNet only) it also outputs, while training, the
        logits of up to three coarser decoder levels (upsampled), which :meth:`loss` weighs in;
        prediction reads the full-resolution output alone. ``model.dropout`` puts dropout in every
        block (what MC dropout samples)."""
        if not isinstance(preprocess, Plan):
            raise ConfigError("the segmentation network is shaped by a plan; none was made")
        net = preprocess.network
        kernels, strides = [list(k) for k in net.kernels], [list(s) for s in net.strides]
        if model.name not in ("dynunet", "unet", "segresnet"):
            raise ConfigError(f"segmentation trains a planned network: set model.name to dynunet (the default), "
                              f"unet or segresnet (got {model.name!r})")  # fmt: skip
        if net.deep_supervision and model.name != "dynunet":
            raise ConfigError(f"deep supervision is built for dynunet; {model.name} has none: drop "
                              "network.deep_supervision or set model.name: dynunet")  # fmt: skip
        if model.name == "unet":
            from monai.networks.nets import UNet

            return UNet(spatial_dims=3, in_channels=in_channels, out_channels=self.out_channels,
                        channels=net.filters, strides=strides[1:], num_res_units=2, norm="instance",
                        dropout=model.dropout)  # fmt: skip
        if model.name == "segresnet":
            from monai.networks.nets import SegResNet

            levels = min(4, len(strides))
            factor = 2 ** (levels - 1)
            if any(size % factor for size in preprocess.patch_size):
                raise ConfigError(
                    f"segresnet halves every axis {levels - 1} times; the plan's patch {list(preprocess.patch_size)} "
                    f"is not a multiple of {factor} along every axis (thick slices?): use dynunet, whose strides "
                    "follow the spacing, or set preprocess.overrides.patch_size"
                )
            return SegResNet(spatial_dims=3, init_filters=net.filters[0], in_channels=in_channels,
                             out_channels=self.out_channels, blocks_down=(1, 2, 2, 4)[:levels],
                             blocks_up=(1,) * (levels - 1), norm="instance",
                             dropout_prob=model.dropout or None)  # fmt: skip
        from monai.networks.nets import DynUNet

        heads = min(3, len(strides) - 2) if net.deep_supervision else 0
        if net.deep_supervision and heads < 1:
            raise ConfigError(f"deep supervision needs a U-Net of at least 3 levels; the plan's has {len(strides)}")
        return DynUNet(3, in_channels, self.out_channels, kernels, strides, strides[1:], filters=net.filters,
                       norm_name="instance", deep_supervision=heads > 0, deep_supr_num=max(heads, 1),
                       dropout=model.dropout or None)  # fmt: skip

    def _targets(self, targets: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Class indices ``(N, Z, Y, X)`` -> one channel per output (one-hot, or region masks); an
        ignored voxel is background here (:meth:`_counted` leaves it out)."""
        indices = targets.long()
        if self.spec.ignore is not None:
            indices = indices.masked_fill(indices == IGNORE_INDEX, 0)
        if not self.regions:
            return F.one_hot(indices, self.out_channels).movedim(-1, 1).to(like.dtype)
        masks = []
        for name in self.structures:
            members = [self.codes.index(c) + 1 for c in self.spec.regions[name]]  # type: ignore[index]
            masks.append(torch.isin(indices, torch.tensor(members, device=indices.device)))
        return torch.stack(masks, dim=1).to(like.dtype)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Soft Dice over the batch (foreground classes or every region) plus cross-entropy (BCE for
        regions). Deep-supervision outputs ``(N, heads, C, ...)`` weigh head ``i`` by ``2**-i``
        (normalised to sum 1; head 0 is the full-resolution output), as nnU-Net does."""
        return supervised_heads(self._loss, outputs, targets)

    def _loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if outputs.shape[0] != targets.shape[0] or outputs.shape[2:] != targets.shape[1:]:
            raise InputError(f"outputs {tuple(outputs.shape)} do not match label patches {tuple(targets.shape)}")
        truth = self._targets(targets, outputs)
        dims = (0, *range(2, outputs.ndim))
        counted = self._counted(targets)
        if self.regions:
            probs = torch.sigmoid(outputs)
            if counted is None:
                entropy = F.binary_cross_entropy_with_logits(outputs, truth)
            else:
                weight = counted[:, None].expand_as(outputs).to(outputs.dtype)
                entropy = F.binary_cross_entropy_with_logits(outputs, truth, weight, reduction="sum")
                entropy = entropy / weight.sum().clamp_min(1)
        else:
            probs = torch.softmax(outputs, dim=1)[:, 1:]
            truth_fg = truth[:, 1:]
            entropy = F.cross_entropy(outputs, targets.long(), ignore_index=IGNORE_INDEX)
            if counted is not None and not counted.any():
                entropy = outputs.sum() * 0  # every voxel ignored: no cross-entropy (not NaN)
            truth = truth_fg
        if counted is not None:
            probs = probs * counted[:, None].to(probs.dtype)
        intersection = (probs * truth).sum(dims)
        denominator = probs.sum(dims) + truth.sum(dims)
        soft_dice = (2 * intersection + 1e-5) / (denominator + 1e-5)
        return entropy + (1 - soft_dice.mean())

    def _counted(self, targets: torch.Tensor) -> torch.Tensor | None:
        """Where the loss and the Dice count (not an ignored voxel); None when the task ignores nothing."""
        return None if self.spec.ignore is None else targets != IGNORE_INDEX

    def _hard(self, outputs: torch.Tensor) -> torch.Tensor:
        """Per structure, a boolean mask ``(N, K, ...)``."""
        if self.regions:
            return outputs > 0
        predicted = outputs.argmax(dim=1)
        return torch.stack([predicted == k + 1 for k in range(len(self.codes))], dim=1)

    def score(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Dice per structure over all validation patches together, and their mean (``dice``)."""
        predicted = self._hard(outputs.float())
        truth = self._targets(targets, outputs).bool()
        if not self.regions:
            truth = truth[:, 1:]
        counted = self._counted(targets)
        if counted is not None:
            predicted = predicted & counted[:, None].to(predicted.device)
        dims = (0, *range(2, predicted.ndim))
        overlap = (predicted & truth).sum(dims).double()
        total = predicted.sum(dims).double() + truth.sum(dims).double()
        values = torch.where(total > 0, 2 * overlap / total.clamp_min(1), torch.full_like(total, float("nan")))
        per = {f"dice_{name}": float(v) for name, v in zip(self.structures, values.tolist(), strict=True)}
        finite = [v for v in per.values() if v == v]
        return {"dice": float(np.mean(finite)) if finite else float("nan"), **per}

    def metric_names(self) -> tuple[str, ...]:
        return ("dice", *(f"dice_{name}" for name in self.structures))

    # --- predictions ------------------------------------------------------------------------
    def scores(self, outputs: torch.Tensor) -> pd.DataFrame:
        """Per patch, the predicted voxels of each structure."""
        hard = self._hard(outputs.float())
        counts = hard.flatten(2).sum(-1).numpy()
        return pd.DataFrame({f"voxels_{n}": counts[:, k] for k, n in enumerate(self.structures)})

    def label_map(
        self, logits: torch.Tensor, plan: Plan, case: Any, spacing: Sequence[float] | None = None
    ) -> np.ndarray:
        """Label codes on the source grid from logits on the preprocessed grid (``case``: the crop box
        and shapes of :class:`~medsight.transforms.volume3d.Preprocessed` or a cached item), then
        :meth:`postprocess`."""
        return self.postprocess(self._painted(logits, case), plan, spacing)

    def _painted(self, logits: torch.Tensor, case: Any) -> np.ndarray:
        """Label codes on the source grid, before any postprocessing."""
        return self._on_source(logits, case)[0]

    def _on_source(self, logits: torch.Tensor, case: Any) -> tuple[np.ndarray, np.ndarray]:
        """Label codes on the source grid before any postprocessing, and each structure's
        probability there (:meth:`LabelMaps.on_source`)."""
        return self.maps.on_source(logits.float().numpy(), case)

    def probability_structures(self) -> tuple[str, ...]:
        """The regions where the recipe names them, else the labels: one probability map each."""
        return tuple(self.structures)

    def postprocess(self, labels: np.ndarray, plan: Plan, spacing: Sequence[float] | None = None) -> np.ndarray:
        """The plan's postprocessing (:meth:`LabelMaps.postprocess`)."""
        return self.maps.postprocess(labels, plan, spacing)

    def settle(
        self, model: nn.Module, data: TaskData, indices: np.ndarray, *, progress: Progress | None = None
    ) -> BaseModel:
        """Postprocessing chosen on the validation cases, as nnU-Net does: each structure keeps only
        its largest component where that raises the mean Dice over all structures (or leaves it
        unchanged and the plan's fingerprint already chose it), and the plan's small-region removal
        stays only where it does not lower it. Returns the plan with the choice."""
        plan: Plan = data.preprocess  # type: ignore[assignment]
        if len(indices) == 0:
            return plan
        planned = {self._name_of(item) for item in plan.keep_largest}
        none = plan.model_copy(update={"keep_largest": [], "min_component_ml": 0.0})
        options = {"none": none, **{n: none.model_copy(update={"keep_largest": [n]}) for n in self.structures},
                   "small": none.model_copy(update={"min_component_ml": plan.min_component_ml})}  # fmt: skip
        scores: dict[str, list[float]] = {o: [] for o in options}
        total = len(data.inputs.items_of(indices))
        for done, (entry, _, logits, reference) in enumerate(self._predicted(model, data, indices), start=1):
            labels = np.asarray(reference.array[0]).astype(np.int64)
            truth = self.structure_masks(labels)
            raw = self._painted(logits, entry)
            for option, variant in options.items():
                mine = self.structure_masks(self._unignored(self.postprocess(raw, variant, reference.geometry.spacing),
                                                            labels))  # fmt: skip
                scores[option].append(float(np.mean([_dice_or_one(mine[n], truth[n]) for n in self.structures])))
            if progress is not None:
                progress("choosing postprocessing on the validation images", done, total)
        mean = {o: float(np.mean(v)) for o, v in scores.items()}
        keep = [n for n in self.structures
                if mean[n] > mean["none"] + 1e-6 or (mean[n] >= mean["none"] - 1e-6 and n in planned)]  # fmt: skip
        small = plan.min_component_ml if mean["small"] >= mean["none"] - 1e-6 else 0.0
        log.info("postprocessing chosen on %d validation image(s): keep the largest component of %s (mean Dice "
                 "%s); remove regions under %.2f ml", len(scores["none"]), keep or "nothing",
                 ", ".join(f"{o} {v:.4f}" for o, v in mean.items()), small)  # fmt: skip
        return plan.model_copy(update={"keep_largest": keep, "min_component_ml": small})

    def _name_of(self, item: int | str) -> str:
        if isinstance(item, str):
            return item
        return next((n for n, c in self.spec.labels.items() if c == item and n in self.structures), str(item))

    def _unignored(self, predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
        """``predicted`` with the reference's ignored voxels set to background (the reference's own
        ignore code is no structure's, so both maps then leave those voxels out)."""
        if self.spec.ignore is None:
            return predicted
        return np.where(truth == self.spec.ignore, 0, predicted).astype(predicted.dtype)

    def structure_masks(self, labels: np.ndarray) -> dict[str, np.ndarray]:
        """Per structure, its mask in a label map of codes."""
        return self.maps.masks(labels)

    def predict_split(
        self, model: nn.Module, data: TaskData, indices: np.ndarray, *, batch_size: int = 64
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Per labelled image of the rows: the whole volume predicted by sliding windows, back on its
        source grid, scored against its reference label map there (spacing-aware)."""
        plan: Plan = data.preprocess  # type: ignore[assignment]
        cases, rows = [], []
        for entry, row, logits, reference in self._predicted(model, data, indices):
            truth = np.asarray(reference.array[0]).astype(np.int64)
            spacing = reference.geometry.spacing
            predicted = self._unignored(self.label_map(logits, plan, entry, spacing), truth)
            cases.append({**row.to_dict(), "label_column": entry.label_column})
            rows.append(self._case_metrics(predicted, truth, spacing))
        return pd.DataFrame(cases), pd.DataFrame(rows)

    def _predicted(
        self, model: nn.Module, data: TaskData, indices: np.ndarray
    ) -> Iterator[tuple[Any, pd.Series, torch.Tensor, Volume]]:
        """Per labelled image of the rows: its cache entry, manifest row, logits over the whole
        preprocessed volume (sliding windows) and reference label map on the source grid."""
        cache: VolumeCache = data.inputs
        plan: Plan = data.preprocess  # type: ignore[assignment]
        model = model.eval()
        for item in cache.items_of(indices):
            entry = cache.items[item]
            logits = sliding_window(model, np.asarray(cache.image(item)), plan, overlap=self.spec.overlap,
                                    mirror=self.spec.mirror)  # fmt: skip
            row = data.manifest.table.iloc[entry.row]
            yield entry, row, logits, read_case_image(data.manifest, row, entry.label_column)  # the image is cached

    def _case_metrics(self, predicted: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
        out: dict[str, float] = {}
        mine, theirs = self.structure_masks(predicted), self.structure_masks(truth)
        voxel_ml = float(np.prod(spacing)) / 1000.0
        for name in self.structures:
            p, t = mine[name], theirs[name]
            out[f"dice_{name}"] = dice(p, t)
            out[f"hd95_{name}"], out[f"nsd_{name}"] = surface_scores(p, t, spacing, tolerance=self.spec.tolerance_mm)
            volume, reference = float(p.sum()) * voxel_ml, float(t.sum()) * voxel_ml
            out[f"volume_error_ml_{name}"] = volume - reference
            out[f"volume_ml_{name}"], out[f"reference_volume_ml_{name}"] = volume, reference
            if self.spec.lesion_wise:
                lesions = lesion_wise(p, t, spacing)
                out[f"lesion_dice_{name}"], out[f"lesion_hd95_{name}"] = lesions.dice, lesions.hd95
        return out

    def predict_volumes(
        self,
        model: nn.Module,
        volumes: Sequence[Volume],
        preprocess: BaseModel,
        *,
        slice_index: int | None = None,
        probabilities: list[Volume | None] | None = None,
    ) -> tuple[pd.DataFrame, list[Volume] | None]:
        """Label maps on each input's own grid (spacing, origin and direction kept), and each
        structure's volume in ml. A cardiac model given a cine (one 3D frame per channel, e.g. ACDC's
        ``_4d.nii.gz``) segments every frame, finds ED and ES on the LV volume curve, and adds the
        function (:func:`cine_function`); its label map has one channel per frame.

        ``probabilities``: a list that gets, per input, each structure's probability on its grid
        (uint8, 255 = 1; one channel per :meth:`probability_structures`, before postprocessing), from
        the same sliding windows; None for a cine."""
        plan = preprocess if isinstance(preprocess, Plan) else None
        if plan is None:
            raise ConfigError("the model package holds no plan; train it again")
        model = model.eval()

        def window(image: np.ndarray) -> np.ndarray:
            return sliding_window(model, image, plan, overlap=self.spec.overlap, mirror=self.spec.mirror).numpy()

        rows, maps = [], []
        for volume in volumes:
            row, labels, found = self.maps.segment(volume, plan, window, probabilities=probabilities is not None)
            rows.append(row)
            maps.append(labels)
            if probabilities is not None:
                probabilities.append(found)
        return pd.DataFrame(rows), maps

    def grouped(self, table: pd.DataFrame, fitted: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
        """Cardiac models predicting a manifest's ED and ES images: one ``function`` row per case (EDV, ESV,
        SV, EF of both ventricles and LV mass; with the reference's where the manifest has label maps),
        e.g. to join to the manifest as a risk model's features. Nothing otherwise."""
        if self.spec.cardiac is None or not {"label_column", "case_id", "patient_id"} <= set(table.columns):
            return {}
        structures = [f"volume_ml_{n}" for n in (self.spec.cardiac.lv, self.spec.cardiac.rv, self.spec.cardiac.myo)]
        if not set(structures) <= set(table.columns):
            return {}
        warnings, rows = cardiac_function(table, table[[]], self.spec.cardiac)
        if len(warnings) > 3:  # one line for a cohort, not one per case
            log.warning("%d case(s) have a ventricle predicted empty in an ED or ES image, or lack one of them "
                        "(their function counts it as empty or is not measured), e.g. %s", len(warnings),
                        "; ".join(warnings[:2]))  # fmt: skip
        else:
            for message in warnings:
                log.warning(message)
        return {"function": rows}

    # --- explanations -----------------------------------------------------------------------
    def explain_targets(self) -> tuple[str, ...]:
        """Each structure (label, or region where the recipe names regions)."""
        return tuple(self.structures)

    def explain_mask(self, labels: np.ndarray, target: int) -> np.ndarray | None:
        """The structure's voxels in a reference label map."""
        return self.structure_masks(np.asarray(labels))[self.structures[target]]

    def explain_case(self, manifest: Manifest, row: pd.Series) -> tuple[Volume, np.ndarray | None]:
        """The case's channels and its label map (the manifest's first image/label pairing)."""

        try:
            pairing = pairings(manifest)[0]
        except InputError:
            raise ConfigError("the manifest has no label map column to read the cases' images with; explain the "
                              "files instead: medsight explain RUN scan.nii.gz") from None  # fmt: skip
        images = read_case(manifest, row, pairing)
        return images.image, None if images.label is None else np.asarray(images.label.array[0])

    def explain_logits(self, outputs: torch.Tensor) -> torch.Tensor:
        """Per structure, the log-odds of the share of the patch the network gives it (the mean of
        its voxels' probabilities): what grows with every voxel of evidence for it."""
        logits = outputs.float()
        probs = torch.sigmoid(logits) if self.regions else torch.softmax(logits, dim=1)[:, 1:]
        share = probs.flatten(2).mean(2).clamp(1e-6, 1 - 1e-6)
        return torch.log(share) - torch.log1p(-share)

    def explain_volume(self, model: nn.Module, volume: Volume, preprocess: BaseModel) -> VolumeView:
        """The volume on the plan's grid, each structure's probability there (sliding windows), and
        the plan's way back to the input's grid."""
        plan = preprocess if isinstance(preprocess, Plan) else None
        if plan is None:
            raise ConfigError("the model package holds no plan; train it again")
        if volume.is_2d:
            raise InputError("the model reads 3D volumes; this input is a single slice")
        if volume.channels != plan.in_channels:
            raise InputError(f"the model reads {plan.in_channels} channel(s) per case; this input has "
                             f"{volume.channels} (a cine: explain one frame, saved as its own file)")  # fmt: skip
        case = preprocess_for_plan(np.asarray(volume.array), volume.geometry.spacing, plan)
        logits = sliding_window(model, case.image, plan, overlap=self.spec.overlap)
        evidence = torch.sigmoid(logits) if self.regions else torch.softmax(logits, dim=0)[1:]
        return VolumeView(case.image, evidence.numpy(), tuple(plan.patch_size),
                          lambda found: restore(found[None].astype(np.float32), case)[0])  # fmt: skip

    def case_files(self, folder: Path, preprocess: BaseModel) -> list[Path] | None:
        """For a model of several channels: the folder's file for each channel, found by its name
        (:func:`~medsight.tasks.labelmaps.channel_files`).

        Raises:
            InputError: the folder holds some of the channels but not all, or one twice.
        """
        plan = preprocess if isinstance(preprocess, Plan) else None
        return None if plan is None else channel_files(folder, plan)

    def evaluate(
        self, val: Prediction, test: Prediction, *, split: str, operating_points: Sequence[str], bootstrap: int
    ) -> tuple[dict[str, Estimate], dict[str, Any], list[str]]:
        """Mean Dice, HD95, NSD, volume error (and lesion-wise figures) per structure over the split's
        images, each with a CI resampling patients; HD95 is averaged where both masks are non-empty."""
        table = test.scores
        groups = test.cases["patient_id"].astype(str).to_numpy()
        figures: dict[str, Estimate] = {}
        details: dict[str, Any] = {"structures": {}}
        warnings: list[str] = []
        means = [table[f"dice_{n}"].to_numpy(float) for n in self.structures]
        overall = bootstrap_ci(_mean_of_rows, np.stack(means, axis=1), groups=groups, n_resamples=bootstrap)
        figures["dice"] = Estimate.of(overall)
        details["dice"] = overall
        for name in self.structures:
            block: dict[str, Any] = {}
            for metric in ("dice", "hd95", "nsd", "volume_error_ml", "lesion_dice", "lesion_hd95"):
                column = f"{metric}_{name}"
                if column not in table:
                    continue
                values = table[column].to_numpy(float)
                if metric == "hd95":
                    undefined = int(np.sum(~np.isfinite(values)))
                    if undefined:
                        warnings.append(
                            f"{name}: HD95 is undefined for {undefined} image(s) where only one of prediction and "
                            "reference has the structure; averaged over the others"
                        )
                    values = np.where(np.isfinite(values), values, np.nan)
                result = bootstrap_ci(_nanmean, values, groups=groups, n_resamples=bootstrap)
                block[metric] = result
                figures[f"{metric.replace('_', ' ')} {name}"] = Estimate.of(result)
            details["structures"][name] = block
        if self.spec.cardiac is not None:
            function, rows = cardiac_function(test.cases, table, self.spec.cardiac)
            warnings.extend(function)
            if not rows.empty:
                figures.update(_function_figures(rows, details, bootstrap))
        for message in warnings:
            log.warning(message)
        return figures, details, warnings


def _function_figures(rows: pd.DataFrame, details: dict[str, Any], bootstrap: int) -> dict[str, Estimate]:
    """MAE with patient CIs and Bland-Altman agreement of each function measure (into ``details``)."""
    figures: dict[str, Estimate] = {}
    groups = rows["patient_id"].astype(str).to_numpy()
    details["function"] = {"cases": rows.to_dict(orient="records")}
    for measure in ("lv_ef", "lv_edv_ml", "lv_esv_ml", "lv_mass_g", "rv_ef"):
        pairs = (rows[measure].to_numpy(float), rows[f"reference_{measure}"].to_numpy(float))
        result = bootstrap_ci(mean_absolute_error, *pairs, groups=groups, n_resamples=bootstrap)
        figures[f"{measure.replace('_', ' ')} mae"] = Estimate.of(result)
        agreement = bland_altman(*pairs)
        details["function"][measure] = {"mae": result, "bias": agreement.bias, "lower": agreement.lower,
                                        "upper": agreement.upper, "cases": agreement.n}  # fmt: skip
    return figures


def cardiac_function(cases: pd.DataFrame, scores: pd.DataFrame, spec: CardiacSpec) -> tuple[list[str], pd.DataFrame]:
    """Per case, measured and reference LV and RV end-diastolic and end-systolic volumes (ml), ejection
    fractions (%), stroke volume (ml) and LV mass (g), from the per-image volumes of its ED and ES
    images; and warnings for cases that lack one of the two."""
    table = pd.concat([cases.reset_index(drop=True), scores.reset_index(drop=True)], axis=1)
    rows, warnings = [], []
    for case, group in table.groupby("case_id", sort=True):
        phases = {row["label_column"]: row for _, row in group.iterrows()}
        if spec.ed not in phases or spec.es not in phases:
            warnings.append(f"case {case}: no {spec.ed if spec.ed not in phases else spec.es} image; its function "
                            "is not measured")  # fmt: skip
            continue
        ed, es = phases[spec.ed], phases[spec.es]
        row: dict[str, Any] = {"case_id": case, "patient_id": ed["patient_id"]}
        referenced = all(f"reference_volume_ml_{n}" in table.columns for n in (spec.lv, spec.rv, spec.myo))
        for prefix in ("", "reference_") if referenced else ("",):

            def volumes(image: pd.Series, prefix: str = prefix) -> dict[str, float]:
                return {n: float(image[f"{prefix}volume_ml_{n}"]) for n in (spec.lv, spec.rv, spec.myo)}

            row.update({prefix + k: v for k, v in ventricular_function(volumes(ed), volumes(es), spec).items()})
        for phase, image in ((spec.ed, ed), (spec.es, es)):
            empty = [n for n in (spec.lv, spec.rv) if float(image[f"volume_ml_{n}"]) == 0]
            if empty:  # an EF of 100 % (or none) from a missed cavity, not from the heart
                warnings.append(f"case {case}: no {' or '.join(empty)} predicted in its {phase} image; its "
                                "function figures count that cavity as empty (look at the prediction)")  # fmt: skip
        rows.append(row)
    return warnings, pd.DataFrame(rows)


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _mean_of_rows(values: np.ndarray) -> float:
    return float(np.mean(values)) if values.size else float("nan")


def _dice_or_one(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice, with 1 where both masks are empty (choosing postprocessing needs a number for every case)."""
    value = dice(prediction, reference)
    return 1.0 if np.isnan(value) else float(value)
