"""Self-configuration: a versioned :class:`Plan` made from a data set's fingerprint.

The rules follow nnU-Net's experiment planner, written for a memory budget on any device:

* Target spacing: the median spacing. A strongly anisotropic data set (one axis more than three
  times coarser than the finest) keeps that axis at the 10th percentile of its spacings, so thick
  slices are not interpolated into many invented ones.
* Network: a U-Net (MONAI DynUNet) that pools an axis only while its feature map stays at least
  4 voxels and its spacing is at most twice the finest (so a coarse axis waits for the fine ones),
  with 1-voxel kernels along an axis still coarser than twice the finest; filters double per level
  from ``base_filters`` up to 320.
* Patch: a cube in millimetres as large as the median resampled case, shrunk along the axis that
  is largest relative to the case until training fits the budget; then the batch is as large as
  the budget allows (at least 2, at most what covers 5 % of the data set's voxels).
* Normalisation per channel: CT clips to the foreground's 0.5-99.5th percentiles and z-scores
  with the data set's foreground mean and standard deviation; other modalities z-score each
  image (inside the non-zero region when cropping to it shrinks the images).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medsight.core.errors import ConfigError, InputError
from medsight.planning.fingerprint import Fingerprint

__all__ = [
    "PLAN_VERSION",
    "Augmentation3D",
    "ChannelNormalization",
    "NetworkPlan",
    "Plan",
    "estimate_memory_gb",
    "make_plan",
    "read_plan",
    "target_spacing",
    "topology",
]

PLAN_VERSION = 1
_ANISOTROPY = 3.0  # an axis this many times coarser than the finest is "thick-slice"
_MIN_FEATURE = 4  # voxels a feature map keeps along an axis before that axis stops pooling
_MAX_LEVELS = 6
_MAX_FILTERS = 320
_BYTES_PER_ACTIVATION = 72.0  # measured: DynUNet training step, fp32, instance norm (62-69 on CPU)
_PROCESS_GB = 0.7  # the training process before its first batch (torch, MONAI, data)
_MAX_DATASET_SHARE = 0.05  # a batch covers at most this share of the data set's voxels


class ChannelNormalization(BaseModel):
    """How one input channel is normalised.

    ``ct``: clip to ``clip`` then ``(x - mean) / std`` with data-set statistics; ``zscore``:
    each image's own mean and standard deviation (inside the non-zero region when ``mask``);
    ``none``: as stored.
    """

    model_config = ConfigDict(extra="forbid")
    scheme: Literal["ct", "zscore", "none"]
    clip: tuple[float, float] | None = None
    mean: float | None = None
    std: float | None = None
    mask: bool = False

    @model_validator(mode="after")
    def _ct_has_statistics(self) -> ChannelNormalization:
        if self.scheme == "ct" and (self.clip is None or self.mean is None or not self.std):
            raise ValueError("ct normalisation needs clip, mean and a non-zero std")
        return self


class NetworkPlan(BaseModel):
    """A U-Net's shape: filters, kernel sizes and strides per level (first stride is 1)."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["dynunet"] = "dynunet"
    filters: list[int]
    kernels: list[tuple[int, int, int]]
    strides: list[tuple[int, int, int]]
    deep_supervision: bool = False

    @model_validator(mode="after")
    def _levels_agree(self) -> NetworkPlan:
        if not (len(self.filters) == len(self.kernels) == len(self.strides)) or len(self.filters) < 2:
            raise ValueError(
                f"filters, kernels and strides need one entry per level (at least 2); got "
                f"{len(self.filters)}, {len(self.kernels)}, {len(self.strides)}"
            )
        if tuple(self.strides[0]) != (1, 1, 1):
            raise ValueError(f"the first level does not pool: strides[0] must be [1, 1, 1], got {self.strides[0]}")
        return self

    @property
    def divisor(self) -> tuple[int, int, int]:
        """What every patch side must be a multiple of (the product of the strides per axis)."""
        return tuple(int(np.prod([s[a] for s in self.strides])) for a in range(3))  # type: ignore[return-value]


class Augmentation3D(BaseModel):
    """Probabilities and ranges of the 3D augmentations (0 switches one off)."""

    model_config = ConfigDict(extra="forbid")
    rotation_p: float = Field(0.2, ge=0, le=1)
    rotation_degrees: float = Field(30.0, ge=0, le=180)  # about each axis (in-plane only when anisotropic)
    scale_p: float = Field(0.2, ge=0, le=1)
    scale_range: tuple[float, float] = (0.7, 1.4)
    elastic_p: float = Field(0.0, ge=0, le=1)
    flip_p: float = Field(0.5, ge=0, le=1)  # per axis
    gamma_p: float = Field(0.3, ge=0, le=1)
    noise_p: float = Field(0.1, ge=0, le=1)
    blur_p: float = Field(0.2, ge=0, le=1)
    bias_field_p: float = Field(0.1, ge=0, le=1)


class CandidateRescoring(BaseModel):
    """A detector's second stage: a logistic model of whether a candidate is a finding, from the
    network's probability and the shape of the image around the candidate (features named in
    :mod:`medsight.tasks.rescoring`), fitted on the validation scans' candidates when training ends.

    Attributes:
        features: The features' names, in the order of the weights.
        mean, scale: Each feature's standardisation (fitted on the validation candidates).
        coef, intercept: The logistic model on the standardised features (with ``pairs``, then
            on the product of every pair of them, each one's square included, in the order of
            ``numpy.triu_indices``).
        pairs: Whether the model weighs the features' pairwise products too (older plans: no).
        candidates, findings: How many validation candidates it was fitted on, and how many of
            them lay on a finding.
        size_coef, size_intercept: A linear model of the log diameter (mm) of the finding a
            candidate lies on, from the same standardised features, fitted on the candidates on
            findings; None where it was no closer to the annotated sizes than the network's own
            diameters in cross-validation (then those are kept).
        size_range: The diameters (mm) the size model may give: half the smallest and twice the
            largest it was fitted on (a candidate unlike any of them is not called a metre wide).
    """

    model_config = ConfigDict(extra="forbid")
    features: list[str] = Field(min_length=1)
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    pairs: bool = False
    candidates: int = Field(ge=0)
    findings: int = Field(ge=0)
    size_coef: list[float] | None = None
    size_intercept: float | None = None
    size_range: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _lengths(self) -> CandidateRescoring:
        if len({self.size_coef is None, self.size_intercept is None, self.size_range is None}) != 1:
            raise ValueError("rescoring's size model needs size_coef, size_intercept and size_range, or none of them")
        if self.size_range is not None and not 0 < self.size_range[0] < self.size_range[1]:
            raise ValueError(f"rescoring's size_range must be two increasing positive diameters, not {self.size_range}")
        n = len(self.features)
        sizes = {n, len(self.mean), len(self.scale), *([len(self.size_coef)] if self.size_coef is not None else [])}
        if len(sizes) != 1:
            raise ValueError("rescoring needs one mean, scale and size weight per feature; the lists differ in length")
        weights = n + n * (n + 1) // 2 if self.pairs else n
        if len(self.coef) != weights:
            products = " and their pairwise products" if self.pairs else ""
            raise ValueError(f"rescoring needs {weights} weights for {n} features{products}; it has {len(self.coef)}")
        if any(not s > 0 for s in self.scale):
            raise ValueError("rescoring scales must be positive")
        return self


class Plan(BaseModel):
    """How one data set is preprocessed and trained (``plan.json``; ``--set`` overrides any field).

    Attributes:
        version: Format version (a plan of another version is refused, not guessed at).
        modality: ``CT``, ``MR``...
        spacing: Target voxel size ``(z, y, x)`` mm every case is resampled to.
        anisotropic_axis: The thick-slice axis (0 = z), when there is one.
        crop_to_nonzero: Crop every case to the box around its non-zero voxels first.
        crop_lungs: Crop every case to the box around its lung fields instead (chest CT; what
            nodule detection looks at), grown by 10 mm.
        keep_findings: Every connected region of a label map keeps at least its voxel nearest its
            centre when resampled to a coarser grid (detection: a nodule smaller than a voxel of the
            plan's grid would otherwise vanish from the targets and be taught as background).
        normalization: One entry per input channel.
        patch_size: Training patch ``(z, y, x)`` voxels, a multiple of the network's divisor.
        batch_size: Patches per training step.
        network: The U-Net.
        augmentation: 3D augmentation.
        foreground_oversampling: Share of patches centred on a foreground voxel.
        epochs, iterations_per_epoch: Training length.
        memory_gb: The budget the patch and batch were chosen for.
        estimated_memory_gb: What training is expected to take (process included).
        keep_largest: Structures whose prediction keeps only its largest component: label values
            that are one component in at least 90 % of the training cases, then, once training
            ends, the label or region names the validation split chose (the task's ``settle``).
        min_component_ml: Predicted foreground regions (all labels together) smaller than this are
            removed: half the 5th percentile of the training cases' regions (0 keeps everything).
        channel_names: The input channels in order, as the data set names them (``t1``, ``flair``);
            prediction finds a case's files by them.
        fingerprint: The data set it was made from.
        rescoring: A detector's second stage, fitted on the validation scans once training ends
            (:class:`CandidateRescoring`); None: candidates keep the network's probability.
    """

    model_config = ConfigDict(extra="forbid")
    version: int = PLAN_VERSION
    modality: str
    spacing: tuple[float, float, float]
    anisotropic_axis: int | None = None
    crop_to_nonzero: bool = True
    crop_lungs: bool = False
    keep_findings: bool = False
    normalization: list[ChannelNormalization]
    patch_size: tuple[int, int, int]
    batch_size: int = Field(ge=1)
    network: NetworkPlan
    augmentation: Augmentation3D = Augmentation3D()
    foreground_oversampling: float = Field(0.33, ge=0, le=1)
    epochs: int = Field(100, ge=1)
    iterations_per_epoch: int = Field(250, ge=1)
    memory_gb: float = Field(gt=0)
    estimated_memory_gb: float
    keep_largest: list[int | str] = []
    min_component_ml: float = Field(0.0, ge=0)
    channel_names: list[str] = []
    fingerprint: Fingerprint
    rescoring: CandidateRescoring | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Plan:
        if self.version != PLAN_VERSION:
            raise ValueError(f"plan version {self.version} is not {PLAN_VERSION}; make the plan again")
        if min(self.spacing) <= 0:
            raise ValueError(f"spacing must be positive mm, got {self.spacing}")
        bad = [p for p, d in zip(self.patch_size, self.network.divisor, strict=True) if p < d or p % d]
        if bad:
            raise ValueError(
                f"patch_size {list(self.patch_size)} must be a multiple of the network's divisor "
                f"{list(self.network.divisor)} along every axis (the product of its strides)"
            )
        if len(self.normalization) != len(self.fingerprint.channels):
            raise ValueError(
                f"normalization has {len(self.normalization)} entries for {len(self.fingerprint.channels)} channels"
            )
        return self

    @property
    def in_channels(self) -> int:
        return len(self.normalization)

    def preprocessing_key(self) -> str:
        """Hash of what preprocessing depends on (spacing, cropping, normalisation): the cache key."""
        crop = "lungs" if self.crop_lungs else self.crop_to_nonzero  # (the old key where lungs are not cropped)
        fields = {"version": self.version, "spacing": self.spacing, "crop": crop,
                  "normalization": [n.model_dump() for n in self.normalization]}  # fmt: skip
        if self.keep_findings:  # (the old key where nothing is kept)
            fields["keep_findings"] = True
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def read_plan(path: str | os.PathLike[str]) -> Plan:
    """A ``plan.json`` as ``medsight plan`` wrote it.

    Raises:
        InputError: the file is missing or not JSON.
        ConfigError: it is not a valid plan of this version (the fields at fault are named).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"{path} does not exist; make one with `medsight plan --data DATA --out {path}`")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not a plan (unreadable JSON: {exc})") from exc
    try:
        return Plan.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'plan'}: {str(e['msg']).removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise ConfigError(f"{path} is not a valid plan: {problems}") from None


def target_spacing(fingerprint: Fingerprint) -> tuple[tuple[float, float, float], int | None]:
    """The spacing every case is resampled to, and the thick-slice axis when there is one."""
    spacing = np.array(fingerprint.median_spacing, dtype=float)
    worst = int(np.argmax(spacing))
    others = [a for a in range(3) if a != worst]
    if spacing[worst] > _ANISOTROPY * spacing[others].min():
        spacings = np.array(fingerprint.spacings, dtype=float)
        spacing[worst] = max(float(np.percentile(spacings[:, worst], 10)), float(spacing[others].max()))
        return tuple(map(float, spacing)), worst  # type: ignore[return-value]
    return tuple(map(float, spacing)), None  # type: ignore[return-value]


def topology(
    patch: tuple[int, int, int], spacing: tuple[float, float, float], *, base_filters: int = 32
) -> tuple[NetworkPlan, tuple[int, int, int]]:
    """The U-Net for a patch at a spacing, and the patch rounded down to what it divides.

    An axis pools while its feature map stays at least 4 voxels and its spacing is at most twice
    the finest current spacing; its kernel is 1 while its spacing is more than twice the finest.
    """
    current = np.array(spacing, dtype=float)
    size = np.array(patch, dtype=float)
    kernels = [tuple(3 if s <= 2 * current.min() else 1 for s in current)]
    strides = [(1, 1, 1)]
    for _ in range(_MAX_LEVELS - 1):
        pool = tuple(2 if size[a] / 2 >= _MIN_FEATURE and current[a] <= 2 * current.min() else 1 for a in range(3))
        if pool == (1, 1, 1):
            break
        strides.append(pool)
        size = size / np.array(pool)
        current = current * np.array(pool)
        kernels.append(tuple(3 if s <= 2 * current.min() else 1 for s in current))
    if len(strides) < 2:
        raise ConfigError(
            f"patch {list(patch)} is too small for a U-Net: no axis can be halved and keep {_MIN_FEATURE} voxels"
        )
    filters = [min(base_filters * 2**level, _MAX_FILTERS) for level in range(len(strides))]
    network = NetworkPlan(filters=filters, kernels=kernels, strides=strides)  # type: ignore[arg-type]
    divisor = network.divisor
    rounded = tuple(max(d, (int(p) // d) * d) for p, d in zip(patch, divisor, strict=True))
    return network, rounded  # type: ignore[return-value]


def estimate_memory_gb(
    network: NetworkPlan, patch: tuple[int, int, int], batch: int, in_channels: int, out_channels: int
) -> float:
    """Peak memory of a training step (fp32, instance norm), the process included.

    Activations kept for the backward pass: ~72 bytes per feature-map element (measured on DynUNet,
    CPU), per level; parameters with their gradient and two optimiser moments: 16 bytes each.
    """
    elements, size = 0.0, np.array(patch, dtype=float)
    for stride, filters in zip(network.strides, network.filters, strict=True):
        size = size / np.array(stride)
        elements += float(np.prod(size)) * filters
    elements += float(np.prod(patch)) * (in_channels + out_channels)
    parameters = _parameters(network, in_channels, out_channels)
    return _PROCESS_GB + (batch * elements * _BYTES_PER_ACTIVATION + 16.0 * parameters) / 2**30


def _parameters(network: NetworkPlan, in_channels: int, out_channels: int) -> float:
    """Approximate parameter count: two convolutions per level, both ways."""
    total, previous = 0.0, in_channels
    for filters, kernel in zip(network.filters, network.kernels, strict=True):
        volume = float(np.prod(kernel))
        total += volume * (previous * filters + filters * filters) * 2
        previous = filters
    return total + network.filters[0] * out_channels


def make_plan(
    fingerprint: Fingerprint,
    *,
    out_channels: int,
    memory_gb: float = 8.0,
    base_filters: int = 32,
    min_batch: int = 2,
) -> Plan:
    """The plan for a data set: spacing, network, patch and batch within ``memory_gb``.

    Raises:
        ConfigError: the budget cannot hold even the smallest patch at ``min_batch``.
    """
    if not memory_gb > 0:
        raise ConfigError(f"--memory-gb must be positive, got {memory_gb}")
    if memory_gb <= _PROCESS_GB:
        raise ConfigError(
            f"--memory-gb {memory_gb:g} is less than the training process itself takes (~{_PROCESS_GB} GB "
            "with PyTorch and MONAI loaded); give at least 1"
        )
    spacing, thick = target_spacing(fingerprint)
    shape = np.array(fingerprint.median_shape) * np.array(fingerprint.median_spacing) / np.array(spacing)
    if fingerprint.nonzero_shrink < 0.75:  # the box around the body/brain: what is left after cropping
        shape = shape * fingerprint.nonzero_shrink ** (1 / 3)
    shape = np.maximum(shape, 1.0)
    # a 256 mm-ish cube scaled by spacing (finer axes get more voxels), no larger than the case
    inverse = 1.0 / np.array(spacing)
    start = inverse * (256.0**3 / float(np.prod(inverse))) ** (1 / 3)
    patch = tuple(int(np.rint(v)) for v in np.minimum(start, shape))
    channels = len(fingerprint.channels)
    while True:
        network, rounded = topology(patch, spacing, base_filters=base_filters)  # type: ignore[arg-type]
        needed = estimate_memory_gb(network, rounded, min_batch, channels, out_channels)
        if needed <= memory_gb:
            break
        # shrink the axis that is largest relative to the case, by one step of what the network divides
        divisor = network.divisor
        # (every axis keeps room for one pooling: a U-Net needs two levels)
        shrinkable = [a for a in range(3) if rounded[a] - divisor[a] >= max(divisor[a], 2 * _MIN_FEATURE)]
        if not shrinkable:
            raise ConfigError(
                f"{memory_gb:g} GB cannot hold a training batch of {min_batch} even at patch {list(rounded)} "
                f"(~{needed:.1f} GB); give more --memory-gb or fewer base filters"
            )
        axis = max(shrinkable, key=lambda a: rounded[a] / shape[a])
        patch = tuple(v - divisor[a] if a == axis else v for a, v in enumerate(rounded))  # type: ignore[assignment]
    per_sample = estimate_memory_gb(network, rounded, 1, channels, out_channels) - _PROCESS_GB
    fits = int((memory_gb - _PROCESS_GB) // max(per_sample, 1e-9))
    cover = int(_MAX_DATASET_SHARE * fingerprint.cases * float(np.prod(shape)) // float(np.prod(rounded)))
    batch = max(min_batch, min(fits, max(cover, min_batch)))
    normalization = [_normalization(fingerprint, k) for k in range(channels)]
    keep = [v for v, share in fingerprint.single_component_share.items() if share >= 0.9]
    return Plan(
        modality=fingerprint.modality,
        spacing=spacing,
        anisotropic_axis=thick,
        crop_to_nonzero=True,
        normalization=normalization,
        patch_size=rounded,
        batch_size=batch,
        network=network,
        memory_gb=memory_gb,
        estimated_memory_gb=round(estimate_memory_gb(network, rounded, batch, channels, out_channels), 2),
        keep_largest=keep,
        min_component_ml=0.5 * fingerprint.smallest_foreground_ml if fingerprint.smallest_foreground_ml else 0.0,
        fingerprint=fingerprint,
    )


def _normalization(fingerprint: Fingerprint, channel: int) -> ChannelNormalization:
    stats = fingerprint.channels[channel]
    if fingerprint.modality == "CT":
        return ChannelNormalization(scheme="ct", clip=(stats.p00_5, stats.p99_5), mean=stats.mean,
                                    std=max(stats.std, 1e-8))  # fmt: skip
    return ChannelNormalization(scheme="zscore", mask=fingerprint.nonzero_shrink < 0.75)
