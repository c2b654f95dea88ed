"""``medsight demo``: phantoms for eight recipes (three 2D, three 3D, and two risk models: one of the cardiac
model's measurements, one reading mammograms beside the table), trained, evaluated and summarised. The
lung-nodule step alone takes longer than the budget of a 2-core CPU: there it is left out and named
with the command that runs it (``medsight demo --recipes lung-nodule-det``)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args

from medsight.core.errors import ConfigError, MedsightError
from medsight.core.progress import Progress
from medsight.data.phantoms import make_phantom, phantoms
from medsight.data.registry import build_manifest
from medsight.data.splits import assign_splits
from medsight.engine.fit import fit
from medsight.engine.recipe import load_recipe
from medsight.validation.evaluate import evaluate_run
from medsight.validation.report import write_index, write_report

__all__ = [
    "DEMO",
    "LEAN",
    "LONG",
    "DemoPlan",
    "DemoRow",
    "Headline",
    "default_budget_minutes",
    "phantom_data",
    "plan_demo",
    "replan",
    "run_demo",
]

log = logging.getLogger(__name__)


class Headline(NamedTuple):
    """A figure the demo prints with its target."""

    label: str
    figure: str  # its name in the evaluation
    target: float
    lower_is_better: bool = False  # errors (EF MAE) meet their target from below


@dataclass(frozen=True)
class Volumetric:
    """How long a 3D step takes on the reference machine (2-core AMD EPYC, AVX-512 BF16), per unit."""

    phantom_s_per_case: float
    epoch_s: float  # one epoch of training and validation, at ``patches`` patches per epoch
    fixed_s: float  # planning, caching, evaluation
    patches: int = 100  # batch size x iterations per epoch the epoch cost was measured at


@dataclass(frozen=True)
class Step:
    recipe: str
    cases: int
    overrides: tuple[str, ...]
    headlines: tuple[Headline, ...]
    stratify: str | None = "target"
    images_per_case: int = 1
    phantom_options: tuple[tuple[str, Any], ...] = ()
    volumetric: Volumetric | None = None  # a 3D step's time model; 2D steps use the image-rate model
    quick: tuple[str, ...] = ()  # the quick profile's overrides beyond the shared ones
    phantom: str | None = None  # the phantom made for it (default: the recipe's own)
    seed_offset: int = 0  # its phantom's seed beyond the demo's (another cohort than an earlier step's)
    clinical: str | None = None  # a table in the phantom's folder joined to the manifest by patient
    features_from: str | None = None  # an earlier step whose run measures each case (joined as features)
    test_fraction: float = 0.15
    quick_cases: int | None = None
    data_from: str | None = None  # an earlier step whose phantom it reads too (the same cases and seed)


# every step trains a fixed number of epochs (no early stopping), so the run keeps its last epoch whatever
# validation says: validation every 5th epoch and the last shows the curve at a fraction of the cost (on
# a 2-core AVX2 CPU, 384-px mammography views every epoch were ~60 s of the step)
_VALIDATE = "train.validate_every=5"
_COMMON = ("train.batch_size=32", "train.precision=auto", "evaluation.bootstrap=1000", _VALIDATE)
DEMO = (
    Step(
        "dr-grading",
        400,
        # 14 epochs at the recipe's lr 0.001: the phantom's lesions are as small and faint as in real
        # photographs, and 10 epochs at 0.002 ended between 0.84 and 0.98 referable AUC from run to run
        (*_COMMON, "preprocess.size=128", "train.epochs=14", "train.early_stopping=null"),
        (Headline("referable-DR AUC", "referable auc", 0.90), Headline("DR grading QWK", "qwk", 0.6)),
    ),
    Step(
        "cxr-findings",
        1200,
        (*_COMMON, "preprocess.size=128", "model.name=resnet18", "train.epochs=12", "train.early_stopping=null"),
        (Headline("CXR macro AUC", "macro auc", 0.85),),
        stratify=None,
    ),
    Step(
        "mammo-screening",
        200,
        # the 2D detector on 64-pixel patches of 384-pixel views (patches balance lesions and tissue). At
        # the recipe's 256 px the phantom's malignant fine calcifications (0.6-1.6 px there) vanish and
        # malignant masses score like benign ones: exam AUC on phantom seeds 1 / 2 / 3 went from 0.875 /
        # 0.963 / 0.801 at 256 px to 0.994 / 1.000 / 0.886 at 384 (AMX, bf16; training 64-69 s -> 79-84 s,
        # evaluation 6-7 s -> 14-15 s); lean (ResNet-10) seeds 0-3: 0.977 / 0.977 / 0.995 / 0.869
        (*_COMMON, "preprocess.size=384", "train.batch_size=64", "train.early_stopping=null"),
        (Headline("mammography exam AUC", "exam auc", 0.85),),
        images_per_case=4,
        quick=("task.patches_per_epoch=128",),
        quick_cases=24,  # the mammography risk step reads these exams too, and splits them three ways
    ),
    Step(
        "brain-tumor-seg",
        40,
        # 2 mm phantoms (the BraTS field of view; 8x faster to make than 1 mm), trained at 2.5 mm with
        # 32^3 patches and a 16-filter U-Net (at 3 mm the WT boundary came out a voxel short and WT missed
        # its target on phantom seeds 1 and 2; at 2.5 mm these 14 epochs give WT 0.904 / 0.871 / 0.888 and
        # ET 0.832 / 0.835 / 0.921 on seeds 0 / 1 / 2, AMX, bf16; the lean figures are with LEAN below)
        (
            "evaluation.bootstrap=1000",
            _VALIDATE,
            "preprocess.base_filters=16",
            "train.epochs=14",
            "preprocess.overrides={spacing: [2.5, 2.5, 2.5], patch_size: [32, 32, 32], batch_size: 4, "
            "iterations_per_epoch: 25}",
        ),
        (Headline("brain tumour WT Dice", "dice WT", 0.85), Headline("brain tumour ET Dice", "dice ET", 0.70)),
        stratify=None,
        phantom_options=(("voxel_mm", 2.0),),
        volumetric=Volumetric(phantom_s_per_case=0.35, epoch_s=6.3, fixed_s=15.0),
    ),
    Step(
        "cardiac-function",
        40,
        # the thick short-axis slices kept; 2.5 mm in plane instead of the data's 1.8 mm, 160 mm patches
        # around the heart half the time; AdamW (SGD's first 4 of 16 epochs barely moved the validation
        # Dice: 0.24-0.44, AdamW's first reached 0.74) for 10 epochs, and half the patches zoomed (a
        # dilated heart at end-diastole was under-segmented with the plan's 0.2)
        (
            "evaluation.bootstrap=1000",
            _VALIDATE,
            "preprocess.base_filters=16",
            "train.epochs=10",
            "train.optimizer=adamw",
            "train.lr=0.003",
            "preprocess.overrides={spacing: [8.0, 2.5, 2.5], patch_size: [12, 64, 64], batch_size: 4, "
            "iterations_per_epoch: 25, foreground_oversampling: 0.5, augmentation: {scale_p: 0.5}}",
        ),
        (Headline("cardiac LV EF MAE (points)", "lv ef mae", 5.0, lower_is_better=True),),
        stratify=None,
        volumetric=Volumetric(phantom_s_per_case=0.23, epoch_s=11.5, fixed_s=12.0),
    ),
    Step(
        # a new cohort of 160 patients: the cardiac-function model measures EF and LV mass on their ED
        # and ES frames, joined with their clinical table; a Cox model of the six, 30 % of patients held
        # out (C-index on ~48). Measuring costs ~37 s on the AMX Xeon (~60 s at the reference's speed)
        "cardiac-risk",
        160,
        ("evaluation.bootstrap=1000",),
        (Headline("cardiac risk C-index (Harrell)", "harrell c", 0.65),),
        stratify="event",
        volumetric=Volumetric(phantom_s_per_case=0.03, epoch_s=0.0, fixed_s=60.0),
        phantom_options=(("cine", False),),  # measured on its ED and ES frames: no 4D cine to make
        phantom="cardiac-function",
        seed_offset=1,
        clinical="clinical.csv",
        features_from="cardiac-function",
        test_fraction=0.3,
        quick_cases=40,
        quick=("preprocess.impute=median",),
    ),
    Step(
        # the mammography step's exams again, with each woman's age, family history and follow-up: a
        # ResNet-10 embedding of each view (where density shows) fused with the two covariates
        "mammo-risk",
        200,
        ("evaluation.bootstrap=1000",),
        (Headline("mammography risk C-index (Harrell)", "harrell c", 0.65),),
        stratify="event",
        images_per_case=4,
        clinical="clinical.csv",
        data_from="mammo-screening",
        phantom="mammo-screening",
        test_fraction=0.3,
        quick_cases=24,
        quick=("preprocess.image.size=48",),
    ),
    Step(
        # 300 chest CTs (~45 test scans with ~44 nodules), the setting that reached CPM 0.857 on this phantom
        # (docs/benchmarks.md): a 16-filter U-Net at 2.5 x 2 x 2 mm, 80 epochs of 2 x 25 patches of 32 x 64 x
        # 64, AdamW; windows overlapping by a quarter at prediction (the training jitter keeps every finding in
        # a patch's central 3/4, and a quarter's overlap puts every voxel there for some window: 2.4x fewer
        # windows than a half). The second stage is fitted on 100 training scans besides the 38 validation
        # ones, its logistic model weighing the features' pairwise products too (with 40 and one weight per
        # feature the step scored CPM 0.799 and 0.792: at the target, not above it; as now it scored 0.834
        # [0.757, 0.916], see docs/benchmarks.md). It takes ~46 min on a 2-core AVX-512 BF16 EPYC (21 of them
        # training, 15 to fit the second stage, 5 to predict the 45 test scans, 3 to prepare 300 scans, 3 for
        # the phantoms): over every 2-core budget, so there it is left out and named
        "lung-nodule-det",
        300,
        (
            "evaluation.bootstrap=1000",
            _VALIDATE,
            "preprocess.base_filters=16",
            "train.epochs=80",
            "train.optimizer=adamw",
            "train.lr=0.001",
            "task.threshold=0.02",
            "task.overlap=0.25",
            "task.rescore_training_scans=100",
            "preprocess.overrides={spacing: [2.5, 2.0, 2.0], patch_size: [32, 64, 64], batch_size: 2, "
            "iterations_per_epoch: 25}",
        ),
        (Headline("lung nodule CPM (LUNA16 FROC)", "cpm", 0.80),),
        stratify=None,
        # measured there (probe 90 images/s, bf16; 2781 s in all, 2744 s estimated): phantoms 164 s,
        # preparing 178 s (targets, then fingerprint and volume cache in 2 processes), 80 epochs 1248 s, the
        # second stage 871 s (138 scans), the 45 test scans 281 s (the training cache reused), report 43 s;
        # here at the reference's speeds
        volumetric=Volumetric(phantom_s_per_case=0.5, epoch_s=15.9, fixed_s=1480.0, patches=50),
        # quick: a coarse grid (the CI runs it: a few windows per scan), the second stage fitted on 2 training scans
        quick=("task.rescore_training_scans=2", "preprocess.overrides.spacing=[5.0, 4.0, 4.0]"),
    ),
)
_QUICK = ("preprocess.size=48", "train.epochs=1", "evaluation.bootstrap=50", "train.precision=fp32")
_QUICK_RISK = ("evaluation.bootstrap=50", "train.epochs=2", "train.precision=fp32")
_QUICK_3D = ("train.epochs=1", "evaluation.bootstrap=50", "train.precision=fp32", "preprocess.base_filters=4",
             "preprocess.overrides.iterations_per_epoch=2", "preprocess.overrides.batch_size=2")  # fmt: skip
# the long profile: more cases, larger images and epochs where the standard 10 minutes fall short
LONG: dict[str, tuple[int, tuple[str, ...]]] = {
    "cxr-findings": (1500, ("preprocess.size=160", "train.epochs=14")),
}
# the lean profile, for CPUs on which the standard demo would overrun its budget (measured at the
# start): ResNet-10 (1.9x faster to train than ResNet-18) for every 2D step, chest X-rays at 96 px for
# 14 epochs. Checked on phantom seeds: DR referable AUC 0.971 / 0.948, QWK 0.817 / 0.780 (seeds 0-1,
# AVX-512 BF16); CXR macro AUC 0.915 / 0.890 / 0.886 (seeds 0-2, fp32, two Intel Xeons, one core
# each), where ResNet-18 gave 0.916 / 0.883 / 0.872.
# The brain step trains 10 epochs instead of 14: WT Dice 0.882 / 0.854 / 0.863, ET 0.802 / 0.835 /
# 0.901 on phantom seeds 0 / 1 / 2 (AMX, bf16; at 3 mm WT 0.873 / 0.821 / 0.843, in the same time). The
# cardiac step keeps the standard training: every cheaper SGD one tried missed the EF target on some
# phantom seeds (seeds 0 / 1 / 2, LV EF MAE): 16 epochs of 2 x 25 patches 8.07 / 6.07 / 4.84 in bf16
# and 4.56 / 5.75 / 4.98 in fp32; 12 base filters 4.58 / 10.38; 12 epochs of 4 x 25 patches 5.26 (seed
# 0); SGD's 16 epochs of 4 x 25 gave 3.89 / 4.06 / 3.94 (bf16). The standard step now trains AdamW for
# 10 epochs with half the patches zoomed: 3.23 / 2.88 / 1.89 (bf16, AVX-512 BF16 EPYC) in 2/3 of the
# time; 8 AdamW epochs missed on seed 1 (8.38; 5.71 with the zooms). Where it does not fit the budget
# it is left out and named, rather than run to miss.
LEAN: dict[str, tuple[int, tuple[str, ...]]] = {
    "dr-grading": (400, ("model.name=resnet10",)),
    "cxr-findings": (1200, ("preprocess.size=96", "train.epochs=14", "model.name=resnet10")),
    "mammo-screening": (200, ("model.name=resnet10", "train.epochs=10", "task.patches_per_epoch=768")),
    "brain-tumor-seg": (40, ("train.epochs=10",)),
}
Profile = Literal["quick", "standard", "lean", "long"]
_PROFILES: tuple[str, ...] = get_args(Profile)
_VAL_FRACTION = 0.15  # the demo's split (the test share is each step's ``test_fraction``)
# Time model, fitted on the reference machine (2-core AMD EPYC, AVX-512 BF16) and checked with its
# AVX2 kernels only: training and validation take their images over the measured training speed
# (scaled by pixel count); phantoms, caches and evaluation take seconds per case that scale with
# the CPU's fp32 speed against the reference's.
_REFERENCE_FP32 = 47.3  # img/s, fp32 contiguous training of the DR probe (ResNet-18, 128 px) there
_REFERENCE_SPEED = 82.8  # img/s, the same in the mode chosen there (bf16, channels-last); scales 3D training
_OVERHEAD_PER_CASE = {"dr-grading": 0.095, "cxr-findings": 0.04, "mammo-screening": 0.15,
                      "mammo-risk": 0.06}  # s per case, reference  # fmt: skip
_MODEL_SPEED = {"resnet10": 1.85}  # training speed against the probe's ResNet-18 (measured, AVX2 kernels)
_PATCH_EFFICIENCY = 0.84  # 64-pixel patches train at this share of the image rate (AVX2 kernels, ResNet-10)
# 3D training in fp32 is slower against the 2D probe than in bf16: a brain epoch took 1.97x and a
# cardiac epoch 2.10x its bf16 time where the probe ran 1.75x slower (Xeon AVX-512 without bf16, and
# the reference with AVX2 kernels: 1.13 and 1.20); on the AVX2 EPYC (2026-12-03) 2.92x (brain, now
# timed and trained channels-last) and 3.30x (cardiac) where the probe ran 2.99x slower (0.98, 1.10)
_FP32_3D = 1.10
_TRAINING_EFFICIENCY = 0.85  # whole epochs (augmentation, data, optimizer) ran at 0.83-0.86 of the probe's speed
# After evaluation: the validation report and the explanations (Grad-CAM with its checks on 6 test
# images, or 2 volumes), in seconds at the reference's fp32 speed: the 2D steps measured on an AMX
# Xeon (fp32 probe 42.9 img/s; 4.3, 8.9 and 15.8 s there), the 3D ones on the AVX2 EPYC (27.7 img/s;
# brain 16.6 s, cardiac 23.5 s there: each volume's faithfulness curves take ~80 passes of a window),
# scaled to the reference
_REPORTING_S = {"dr-grading": 3.9, "cxr-findings": 8.1, "mammo-screening": 14.3, "brain-tumor-seg": 9.7,
                "cardiac-function": 13.8, "cardiac-risk": 0.5, "mammo-risk": 1.0, "lung-nodule-det": 34.0}  # fmt: skip
_REPORTING_DEFAULT_S = 10.0
# the image size a 2D step's reporting seconds were measured at, where they grow with it: mammography's
# explanations (Grad-CAM and its deletion/insertion curves over whole views) took 22.7 s at 256 px on the
# AVX2 EPYC (13.3 s at the reference) and 28.8 s at 384 px on the AMX Xeon (fp32 probe 75 img/s), where
# the 256-px figure predicts 9 s and scaled by pixels 20 s
_REPORTING_SIZE = {"mammo-screening": 256}


@dataclass(frozen=True)
class DemoPlan:
    """What the demo will run and how long it should take on this CPU."""

    profile: Profile
    steps: tuple[tuple[Step, int, tuple[str, ...]], ...]  # step, cases, overrides beyond the step's
    cpu_class: str = ""
    mode: str = ""
    images_per_second: float | None = None  # the probe's speed as ResNet-18's at 128 px (the time model's unit)
    estimated_seconds: float | None = None
    reason: str = ""
    left_out: tuple[tuple[str, float], ...] = ()  # recipes the budget leaves out, with their estimated seconds
    fp32_images_per_second: float | None = None  # the probe's fp32 speed (scales phantoms, caches, evaluation)
    bf16: bool = False  # whether the chosen mode autocasts to bf16 (3D training then does too)
    budget_seconds: float | None = None
    named: bool = False  # the user named the recipes: they all run, whatever the budget

    def seconds(self, step: tuple[Step, int, tuple[str, ...]]) -> float:
        """The estimated seconds of one step on this CPU (0 when nothing was measured)."""
        if self.images_per_second is None or self.fp32_images_per_second is None:
            return 0.0
        return _estimate((step,), self.images_per_second, self.fp32_images_per_second, bf16=self.bf16)

    def describe(self) -> str:
        """What the user reads first: CPU class, speed, profile, the expected duration and the
        recipes left out to fit the budget (with the command that runs them)."""
        if self.images_per_second is None or self.estimated_seconds is None:
            return f"{self.profile} demo"
        minutes = max(1, round(self.estimated_seconds / 60))
        text = (f"this CPU: {self.cpu_class}, ~{self.images_per_second:.0f} training images/s ({self.mode}); "
                f"the {self.profile} demo will take ~{minutes} min")  # fmt: skip
        if self.budget_seconds is not None:
            text = f"{text} of its {self.budget_seconds / 60:g} min budget"
        text = f"{text} ({self.reason})" if self.reason else text
        return f"{text}\n{self.left_out_note()}" if self.left_out else text

    def left_out_note(self) -> str:
        """The recipes the budget left out and how to run them ('' when none was)."""
        if not self.left_out:
            return ""
        names = ", ".join(f"{recipe} (~{max(1, round(seconds / 60))} min)" for recipe, seconds in self.left_out)
        return (
            f"left out to fit the budget: {names}; run {'it' if len(self.left_out) == 1 else 'them'} with "
            "`medsight demo --recipes "
            f"{','.join(recipe for recipe, _ in self.left_out)}`, or all with a larger --budget"
        )


@dataclass(frozen=True)
class DemoRow:
    """One headline figure of the demo."""

    recipe: str
    label: str
    estimate: float
    low: float
    high: float
    target: float
    seconds: float

    lower_is_better: bool = False

    @property
    def met(self) -> bool:
        return self.estimate <= self.target if self.lower_is_better else self.estimate >= self.target


def phantom_data(
    recipe: str,
    folder: Path,
    *,
    cases: int,
    seed: int,
    progress: Progress | None = None,
    options: dict[str, Any] | None = None,
) -> bool:
    """Make the recipe's phantom in ``folder`` unless it already holds these cases, seed and
    phantom options (a marker written last says so); True when it was made."""
    marker, wanted = folder / ".complete", {"cases": cases, "seed": seed, **({"options": options} if options else {})}
    try:
        if json.loads(marker.read_text()) == wanted:
            return False
    except (OSError, ValueError):
        pass
    make_phantom(recipe, folder, cases=cases, seed=seed, overwrite=True, progress=progress, options=options)
    marker.write_text(json.dumps(wanted))
    return True


def _steps(profile: Profile, recipes: Sequence[str] | None = None) -> tuple[tuple[Step, int, tuple[str, ...]], ...]:
    extras = {"long": LONG, "lean": LEAN}.get(profile, {})
    steps = []
    for step in DEMO:
        if recipes is not None and step.recipe not in recipes:
            continue
        cases, extra = extras.get(step.recipe, (step.cases, ()))
        if profile == "quick":
            cases = step.quick_cases or max(12, cases // 25)
            risk = step.features_from or step.data_from
            shared = _QUICK_RISK if risk else _QUICK_3D if step.volumetric else _QUICK
            extra = (*shared, *step.quick)
        steps.append((step, cases, extra))
    return tuple(steps)


def _recipe(step: Step, extra: tuple[str, ...], seed: int) -> Any:
    return load_recipe(step.recipe, [*step.overrides, *extra, f"train.seed={seed}"])


def _classifies(step: Step, extra: tuple[str, ...]) -> bool:
    """Whether the step trains a 2D classifier (what the speed probe times)."""
    from medsight.tasks import ClassificationTask, task_for

    return isinstance(task_for(_recipe(step, extra, 0).task), ClassificationTask)


def _probe(step: Step, extra: tuple[str, ...]) -> Any:
    """The numeric mode training will choose for the first step, with the speeds measured for it
    (the same model and batch shape as training, so training finds the choice cached)."""
    import torch

    from medsight.engine.config import choose_device
    from medsight.engine.tuning import choose_mode
    from medsight.tasks import ClassificationTask, task_for

    recipe = _recipe(step, extra, 0)
    task = task_for(recipe.task)
    if not isinstance(task, ClassificationTask):
        raise ConfigError(f"the demo's speed probe times a 2D classifier; {step.recipe} is a {recipe.task.kind} task")
    model = task.network(recipe.model, recipe.preprocess.channels)
    count, size = recipe.train.batch_size, recipe.preprocess.size  # choose_mode times the first few, as in training
    generator = torch.Generator().manual_seed(0)
    inputs = torch.rand(count, recipe.preprocess.channels, size, size, generator=generator)
    classes = len(recipe.task.classes)
    if task.kind == "multilabel":
        targets = torch.randint(0, 2, (count, classes), generator=generator).float()
    else:
        targets = torch.randint(0, 2 if task.kind == "binary" else classes, (count,), generator=generator).float()
    device = choose_device(recipe.train.device)
    return choose_mode(recipe.train.precision, recipe.train.channels_last, device, model=model,
                       batch=(inputs, targets), loss_fn=task.loss, model_name=recipe.model.name)  # fmt: skip


def _probe_scale(step: Step, extra: tuple[str, ...]) -> float:
    """What the probe's speed on ``step`` is multiplied by to be the speed of the time model's
    reference probe (ResNet-18 at 128 px): a lean plan probes ResNet-10, whose speed the model
    would otherwise count twice (:data:`_MODEL_SPEED`), and a subset may probe another size."""
    recipe = _recipe(step, extra, 0)
    return (recipe.preprocess.size / 128) ** 2 / _MODEL_SPEED.get(recipe.model.name, 1.0)


def _estimate(
    steps: tuple[tuple[Step, int, tuple[str, ...]], ...], speed: float, fp32_speed: float, *, bf16: bool = True
) -> float:
    """Seconds the demo should take at ``speed`` training images/s (128 px) in the chosen mode
    (``bf16``: whether that mode autocasts to bf16, as 3D training then does too)."""
    total = 0.0
    for step, cases, extra in steps:
        recipe = _recipe(step, extra, 0)
        size = getattr(recipe.preprocess, "size", None)  # a 2D classifier's or detector's images
        total += _reporting(step.recipe, fp32_speed, size)  # (the explanations' cost goes with them)
        if step.volumetric is not None:  # 3D: reference seconds, scaled by this CPU's training speed
            cost = step.volumetric
            plan = dict(getattr(recipe.preprocess, "overrides", None) or {})  # a risk step has no patches
            patches = plan.get("batch_size", 0) * plan.get("iterations_per_epoch", 0) or cost.patches
            epoch = cost.epoch_s * patches / cost.patches  # training time goes with the voxels drawn
            total += cases * cost.phantom_s_per_case * _REFERENCE_FP32 / fp32_speed
            total += (epoch * recipe.train.epochs + cost.fixed_s) * _REFERENCE_SPEED / speed * (1 if bf16 else _FP32_3D)
            continue
        images = cases * step.images_per_case
        size = size or recipe.preprocess.image.size  # a risk step's images
        pixels = (size / 128) ** 2
        epochs = recipe.train.epochs
        rate = speed * _MODEL_SPEED.get(recipe.model.name, 1.0) * _TRAINING_EFFICIENCY / pixels
        kept = 1 - step.test_fraction  # training and validation cases
        training = images * kept * (1 - _VAL_FRACTION) * epochs / rate
        if recipe.task.kind == "detection2d":  # trained on patches, a fixed number per epoch (at ~0.84 of the rate)
            patches = recipe.task.patches_per_epoch * epochs * (recipe.task.patch / recipe.preprocess.size) ** 2
            training = patches / (_PATCH_EFFICIENCY * rate)
        scored = kept * _VAL_FRACTION * recipe.train.validations + step.test_fraction  # images scored, per image
        scoring = images * scored / (3 * rate)  # ~3x training speed
        overhead = cases * _OVERHEAD_PER_CASE.get(step.recipe, 0.1) * _REFERENCE_FP32 / fp32_speed
        total += training + scoring + overhead
    return total


def _reporting(recipe: str, fp32_speed: float, size: int | None = None) -> float:
    """Seconds the report (and a 2D run's explanations) of ``recipe`` take at ``fp32_speed``, on
    images of ``size`` pixels where the step sets it (scaled by pixel count from the size measured)."""
    pixels = (size / _REPORTING_SIZE[recipe]) ** 2 if size and recipe in _REPORTING_SIZE else 1.0
    return _REPORTING_S.get(recipe, _REPORTING_DEFAULT_S) * pixels * _REFERENCE_FP32 / fp32_speed


def _fit(
    steps: tuple[tuple[Step, int, tuple[str, ...]], ...], budget: float, seconds: Any, *, at_least_one: bool = True
) -> tuple[tuple[tuple[Step, int, tuple[str, ...]], ...], tuple[tuple[str, float], ...]]:
    """The most steps that fit ``budget`` seconds together (of equally many, those earliest in the
    demo's order) and those left out with their estimated seconds; with ``at_least_one`` the
    quickest step runs even when none fits."""
    from itertools import combinations

    costs = [seconds(step) for step in steps]
    names = [step[0].recipe for step in steps]

    def whole(chosen: tuple[int, ...]) -> bool:  # a step measured by another runs only with it
        kept = {names[i] for i in chosen}
        return all(steps[i][0].features_from not in names or steps[i][0].features_from in kept for i in chosen)

    alone = [i for i in range(len(steps)) if whole((i,))] or list(range(len(steps)))
    kept: tuple[int, ...] = (min(alone, key=costs.__getitem__),) if at_least_one else ()
    for count in range(len(steps), 0, -1):
        fitting = next((c for c in combinations(range(len(steps)), count)
                        if whole(c) and sum(costs[i] for i in c) <= budget), None)  # fmt: skip
        if fitting is not None:
            kept = fitting
            break
    left = tuple((steps[i][0].recipe, costs[i]) for i in range(len(steps)) if i not in kept)
    return tuple(steps[i] for i in kept), left


# The demo's time budget by CPU class when the user sets none: 10 minutes where PyTorch runs AVX-512 (or
# AMX) kernels, 15 on the AVX2 laptops and VMs most people have
_FAST_CLASSES = ("AMX", "AVX-512 BF16", "AVX-512")
_BUDGET_MINUTES, _FAST_BUDGET_MINUTES = 15.0, 10.0


def default_budget_minutes(cpu: str) -> float:
    """The minutes the demo may take on a CPU of class ``cpu`` (:func:`~medsight.engine.tuning.cpu_class`)
    when ``--budget`` is not given: 10 on AVX-512 and AMX, 15 on everything else."""
    return _FAST_BUDGET_MINUTES if cpu in _FAST_CLASSES else _BUDGET_MINUTES


def plan_demo(
    profile: Profile = "standard", *, budget_minutes: float | None = None, recipes: Sequence[str] | None = None
) -> DemoPlan:
    """Choose what the demo runs: measure this CPU's training speed (a few steps, seconds; cached)
    and estimate the duration. ``budget_minutes`` defaults by CPU class
    (:func:`default_budget_minutes`). A standard demo that would overrun the budget becomes the
    lean one (:data:`LEAN`, fewer and smaller images; the targets stay as they are); where even
    that overruns it, as many recipes as fit run and the plan names those left out and how to run
    them. ``recipes`` runs a subset of the demo's recipes, all of them whatever
    the budget.

    Raises:
        ConfigError: an unknown profile or recipe, or a budget that is not positive.
    """
    if profile not in _PROFILES:
        raise ConfigError(f"demo profile must be {', '.join(_PROFILES)}; got {profile!r}")
    from medsight.engine.tuning import cpu_class

    budget_minutes = default_budget_minutes(cpu_class()) if budget_minutes is None else budget_minutes
    if not budget_minutes > 0:
        raise ConfigError(f"the demo's time budget must be a positive number of minutes, got {budget_minutes}")
    if recipes is not None:
        known = [step.recipe for step in DEMO]
        unknown = [r for r in recipes if r not in known]
        if unknown or not recipes:
            raise ConfigError(f"--recipes takes some of {', '.join(known)} (comma-separated); got {list(recipes)}")
    if recipes is not None:  # a step measured by another's model needs that one's run first
        upstream = {s.features_from for s in DEMO if s.recipe in recipes and s.features_from}
        recipes = [s.recipe for s in DEMO if s.recipe in recipes or s.recipe in upstream]
    steps = _steps(profile, recipes)
    if profile == "quick":
        return DemoPlan(profile, steps)
    # the probe times the first 2D classifier (the other steps' time models are scaled by its speed)
    first, _, extra = next((s for s in steps if _classifies(s[0], s[2])), _steps(profile)[0])
    mode = _probe(first, extra)
    speed, speeds = mode.images_per_second, dict(mode.speeds)
    fp32 = speeds.get("fp32, contiguous", speed)
    if speed is None or fp32 is None:  # nothing measured (a fixed mode): no estimate
        return DemoPlan(profile, steps, cpu_class(), mode.label)
    scale = _probe_scale(first, extra)  # the time model's speeds are ResNet-18's at 128 px
    speed, fp32 = speed * scale, fp32 * scale
    bf16 = mode.amp_dtype is not None
    budget = budget_minutes * 60

    def cost(step: tuple[Step, int, tuple[str, ...]]) -> float:
        return _estimate((step,), speed, fp32, bf16=bf16)

    estimate = _estimate(steps, speed, fp32, bf16=bf16)
    reason, left_out, shown = "", (), estimate
    if recipes is None and estimate > budget:  # a recipe over the whole budget even lean (and what it measures)
        lean = _steps("lean")  # is left out first, where the rest then fit with their standard settings
        lean_cost = {s[0].recipe: cost(s) for s in lean}  # (each estimated once: it reads the recipe)
        over = {recipe for recipe, seconds in lean_cost.items() if seconds > budget}
        over |= {s[0].recipe for s in lean if s[0].features_from in over}
        rest = tuple(s for s in steps if s[0].recipe not in over)
        shown = _estimate(rest, speed, fp32, bf16=bf16) if over and rest else estimate
        if over and rest and shown <= budget:
            left_out = tuple((s[0].recipe, lean_cost[s[0].recipe]) for s in lean if s[0].recipe in over)
            steps, estimate = rest, shown
    if profile == "standard" and estimate > budget:
        lean = _steps("lean", recipes)  # (what overruns the budget alone is left out by the fit below)
        reason = f"the standard demo would take ~{shown / 60:.0f} min here, over the {budget_minutes:g} min budget"
        profile, steps, estimate = "lean", lean, _estimate(lean, speed, fp32, bf16=bf16)
        if estimate > budget and recipes is None:  # recipes named by the user all run, whatever the budget
            steps, left_out = _fit(steps, budget, cost)
            estimate = _estimate(steps, speed, fp32, bf16=bf16)
    plan = DemoPlan(profile, steps, cpu_class(), mode.label, speed, estimate, reason, left_out, fp32, bf16, budget,
                    named=recipes is not None)  # fmt: skip
    log.info("%s", plan.describe())
    return plan


# a demo running this much slower than estimated is not re-planned: the estimate's own spread
_SLACK = 1.05


def _order(left_out: tuple[str, float]) -> int:
    return [step.recipe for step in DEMO].index(left_out[0])


def replan(
    plan: DemoPlan, actual: Sequence[float], elapsed: float, prepaid: Mapping[str, float] | None = None
) -> tuple[DemoPlan, str] | None:
    """The plan for the rest of the demo once its first ``len(actual)`` steps took ``actual``
    seconds, where the estimate was optimistic enough that the rest would overrun the budget;
    None to go on as planned.

    The steps still to run are estimated as before, scaled by how much slower than estimated
    the steps so far ran (the machine is busier or slower than the first seconds' probe said).
    A standard demo that would overrun then runs its remaining recipes with the lean settings
    (same targets); where even those overrun and the user did not name the recipes, the ones
    that fit in the time left run and the others are left out (named, with their scaled
    estimates). ``elapsed`` is the seconds the demo has run; ``prepaid`` the seconds of each
    remaining recipe already spent (its phantoms, made first), which its estimate includes. Quick
    and long demos are never re-planned.
    """
    done, remaining = plan.steps[: len(actual)], plan.steps[len(actual) :]
    if plan.profile not in ("standard", "lean") or not remaining or plan.budget_seconds is None:
        return None
    expected = sum(plan.seconds(step) for step in done)
    if expected <= 0 or sum(actual) <= _SLACK * expected:
        return None
    ratio = sum(actual) / expected
    left = plan.budget_seconds - elapsed
    spent = dict(prepaid or {})
    costs: dict[tuple[Step, int, tuple[str, ...]], float] = {}

    def cost(step: tuple[Step, int, tuple[str, ...]]) -> float:  # what the step still costs (estimated once)
        if step not in costs:
            costs[step] = max(0.0, ratio * plan.seconds(step) - spent.get(step[0].recipe, 0.0))
        return costs[step]

    if sum(map(cost, remaining)) <= left:
        return None
    profile, notes = plan.profile, []
    if profile == "standard":
        lean = {s.recipe: (s, c, e) for s, c, e in _steps("lean", [step.recipe for step, _, _ in remaining])}
        lighter = [step[0].recipe for step in remaining if lean[step[0].recipe] != step]
        remaining, profile = tuple(lean[step.recipe] for step, _, _ in remaining), "lean"
        if lighter:  # (a recipe whose lean settings are its standard ones runs as it is)
            notes.append(f"{', '.join(lighter)} run lean settings (same targets)")
    left_out: tuple[tuple[str, float], ...] = ()
    if sum(map(cost, remaining)) > left and not plan.named:
        remaining, left_out = _fit(remaining, left, cost, at_least_one=False)
        notes.append(f"{', '.join(recipe for recipe, _ in left_out)} left out")
    if not notes:  # lean already and the recipes named by the user: they run, over the budget or not
        return None
    estimate = elapsed + sum(map(cost, remaining))
    message = (
        f"the demo runs {ratio:.2f}x slower than estimated ({sum(actual):.0f} s for "
        f"{', '.join(step.recipe for step, _, _ in done)}, estimated {expected:.0f} s), so the rest would overrun "
        f"the {plan.budget_seconds / 60:g} min budget: {'; '.join(notes)}; expected to end after ~"
        f"{max(1, round(estimate / 60))} min"
    )
    changed = replace(plan, profile=profile, steps=(*done, *remaining), estimated_seconds=estimate,
                      left_out=tuple(sorted((*plan.left_out, *left_out), key=_order)), reason=message)  # fmt: skip
    log.info("%s", message)  # the CLI prints it (on_replan)
    return changed, message


def take_back(
    plan: DemoPlan, actual: Sequence[float], elapsed: float, prepaid: Mapping[str, float] | None = None
) -> tuple[DemoPlan, str] | None:
    """The plan with recipes the budget left out at the start run after all, once the first
    ``len(actual)`` steps ran enough faster than estimated that those recipes fit in the time left
    (the probe ran on a busier machine than the demo, or its figures came from the cache of such a
    run); None to go on as planned.

    The steps still to run, and those taken back, keep their full estimates (only the time the
    steps so far saved is counted, so one quick step does not bring back everything); taken-back
    steps run last, in the demo's order, and a step
    measured by another only with it (their phantoms are made when they start, in one process if
    training threads are running). ``elapsed`` and ``prepaid`` are as for :func:`replan`. Quick
    and long demos, and demos of recipes the user named, are never changed.
    """
    done, remaining = plan.steps[: len(actual)], plan.steps[len(actual) :]
    if plan.profile not in ("standard", "lean") or not plan.left_out or plan.budget_seconds is None or plan.named:
        return None
    expected = sum(plan.seconds(step) for step in done)
    if expected <= 0 or sum(actual) * _SLACK >= expected:
        return None
    ratio = sum(actual) / expected
    spent = dict(prepaid or {})

    def cost(step: tuple[Step, int, tuple[str, ...]]) -> float:  # at its full estimate: only time saved counts
        return max(0.0, plan.seconds(step) - spent.get(step[0].recipe, 0.0))

    left = plan.budget_seconds - elapsed - sum(map(cost, remaining))
    planned = {step.recipe for step, _, _ in plan.steps}
    candidates = _steps(plan.profile, [recipe for recipe, _ in plan.left_out])
    wanted = {step.recipe for step, _, _ in candidates}
    candidates = tuple(c for c in candidates if c[0].features_from in (None, *planned, *wanted))
    back, still_out = _fit(candidates, left, cost, at_least_one=False)
    if not back:
        return None
    steps = (*plan.steps, *back)
    estimate = elapsed + sum(map(cost, (*remaining, *back)))
    tried = {step.recipe for step, _, _ in candidates}
    left_out = tuple(sorted((*(item for item in plan.left_out if item[0] not in tried), *still_out), key=_order))
    message = (
        f"the demo runs {ratio:.2f}x its estimate ({sum(actual):.0f} s for "
        f"{', '.join(step.recipe for step, _, _ in done)}, estimated {expected:.0f} s), so "
        f"{', '.join(step.recipe for step, _, _ in back)} {'fits' if len(back) == 1 else 'fit'} the "
        f"{plan.budget_seconds / 60:g} min budget after all and run{'s' if len(back) == 1 else ''} last; "
        f"expected to end after ~{max(1, round(estimate / 60))} min"
    )
    changed = replace(plan, steps=steps, estimated_seconds=estimate, left_out=left_out, reason=message)
    log.info("%s", message)  # the CLI prints it (on_replan)
    return changed, message


def _step_manifest(step: Step, data: Path, out: Path, recipe: Any, seed: int, progress: Progress | None) -> Any:
    """The step's manifest: its phantom read, its clinical table joined by patient, split by patient, and
    (a risk step) each case measured by an earlier step's run, those measures joined as features."""
    from medsight.data.join import join_table, read_table
    from medsight.inference import Predictor

    manifest = build_manifest(data, format=phantoms()[step.phantom or step.recipe].layout)
    if step.clinical:
        manifest = join_table(manifest, read_table(data / step.clinical)).manifest
    split = assign_splits(manifest, stratify=step.stratify, seed=seed, respect_official=False,
                          val_fraction=_VAL_FRACTION, test_fraction=step.test_fraction)  # fmt: skip
    if step.features_from is None:
        return split
    upstream = out / "runs" / step.features_from
    if not (upstream / "best.pt").is_file():
        raise ConfigError(f"its features are measured by the {step.features_from} run, which this demo did not "
                          f"train (run `medsight demo --recipes {step.features_from},{step.recipe}`)")  # fmt: skip
    predictor = Predictor.from_run(upstream)
    table = predictor.predict_split(predictor.prepare(split, progress=progress), "all").table()
    measured = next(iter(predictor.grouped(table).values()), None)
    if measured is None:
        raise ConfigError(f"the {step.features_from} run measures nothing per case to join")
    wanted = [c for c in recipe.task.features if c in measured.columns and c not in split.table.columns]
    return join_table(split, measured, on="case_id", columns=wanted).manifest


def run_demo(
    out: str | os.PathLike[str] = "medsight-demo",
    *,
    profile: Profile = "standard",
    seed: int = 0,
    progress: Progress | None = None,
    plan: DemoPlan | None = None,
    on_replan: Callable[[DemoPlan, str], None] | None = None,
    explain: Callable[[Path, Path], object] | None = None,
    explainer: Callable[[Path], Any] | None = None,
) -> list[DemoRow]:
    """Make, train and evaluate every recipe on phantoms under ``out``; return the headline rows.

    ``standard`` takes about 14 minutes on a 2-core AVX-512 BF16 CPU; where it would overrun the
    plan's budget (measured at the start, :func:`plan_demo`) the ``lean`` settings run instead
    (about 9.5 minutes there).
    ``quick`` shrinks everything (a handful of cases, one epoch, tiny images) to check that the
    whole chain runs; its figures mean nothing. ``long`` gives chest X-rays more cases, larger
    images and more epochs (:data:`LONG`).
    After each recipe the rest is re-planned when the demo runs slower than estimated
    (:func:`replan`); ``on_replan`` is told the new plan and why. ``explain(run, manifest)``, when
    given, explains each evaluated run before its report is written (the report shows what it wrote
    into ``RUN/explain``); a failure there is logged, not fatal. ``explainer`` gives the reports'
    failure galleries their maps (:func:`~medsight.validation.report.write_report`).
    Timings per stage go to ``out/timings.json``; each run's validation report to
    ``out/runs/<recipe>/report.html``, linked from ``out/index.html``.
    """
    begun = time.perf_counter()
    plan = plan or plan_demo(profile)
    out = Path(out)
    for folder in (out / "data", out / "runs"):
        folder.mkdir(parents=True, exist_ok=True)
    # every phantom first: made by worker processes before this process starts any training threads
    timings: dict[str, Any] = {}
    for step, cases, _ in plan.steps:
        started = time.perf_counter()
        phantom_data(step.phantom or step.recipe, out / "data" / (step.data_from or step.recipe), cases=cases,
                     seed=seed + step.seed_offset, progress=progress, options=dict(step.phantom_options))  # fmt: skip
        timings[step.recipe] = {"phantoms_s": round(time.perf_counter() - started, 1)}
    rows: list[DemoRow] = []
    pages: list[Path] = []
    actual: list[float] = []
    replanned: list[str] = []
    while len(actual) < len(plan.steps):
        step, cases, extra = plan.steps[len(actual)]
        started = time.perf_counter()
        timings.setdefault(step.recipe, {"phantoms_s": 0.0})  # a step taken back makes its phantoms now
        data = out / "data" / (step.data_from or step.recipe)
        # a re-planned step whose phantom differs from the one made first (none of today's do)
        phantom_data(step.phantom or step.recipe, data, cases=cases, seed=seed + step.seed_offset, progress=progress,
                     options=dict(step.phantom_options))  # fmt: skip
        manifest_path = out / f"{step.recipe}.csv"
        run = out / "runs" / step.recipe
        if run.exists():  # the demo owns its folder: a rerun starts the training afresh
            shutil.rmtree(run)
        recipe = _recipe(step, extra, seed)
        try:
            _step_manifest(step, data, out, recipe, seed, progress).save(manifest_path)
        except MedsightError as exc:  # e.g. the run whose measurements a risk step needs did not run
            log.warning("%s left out: %s", step.recipe, exc)
            actual.append(time.perf_counter() - started)
            continue
        fit(recipe, manifest_path, run, progress=progress)
        trained = time.perf_counter()
        report = evaluate_run(run, progress=progress)
        evaluated = time.perf_counter()
        if explain is not None:
            try:
                explain(run, manifest_path)
            except MedsightError as exc:
                log.warning("%s: explanations left out (%s)", step.recipe, exc)
        pages.append(write_report(run, explainer=explainer))
        reported = time.perf_counter()
        timings[step.recipe].update(train_s=round(trained - started, 1), evaluate_s=round(evaluated - trained, 1),
                                    explain_report_s=round(reported - evaluated, 1))  # fmt: skip
        seconds = time.perf_counter() - started + timings[step.recipe]["phantoms_s"]
        for line in step.headlines:
            value = report.figure(line.figure)
            rows.append(DemoRow(step.recipe, line.label, value.estimate, value.low, value.high, line.target, seconds,
                                line.lower_is_better))  # fmt: skip
        log.info("%s done in %.0f s (%s)", step.recipe, seconds, timings[step.recipe])
        actual.append(seconds)
        prepaid = {s.recipe: timings.get(s.recipe, {}).get("phantoms_s", 0.0) for s, _, _ in plan.steps[len(actual) :]}
        elapsed = time.perf_counter() - begun
        changed = replan(plan, actual, elapsed, prepaid) or take_back(plan, actual, elapsed, prepaid)
        if changed is not None:
            plan, message = changed
            replanned.append(message)
            if on_replan is not None:
                on_replan(plan, message)
    timings["plan"] = {"profile": plan.profile, "cpu_class": plan.cpu_class, "mode": plan.mode,
                       "images_per_second": plan.images_per_second,
                       "fp32_images_per_second": plan.fp32_images_per_second, "estimated_s": plan.estimated_seconds,
                       "step_estimates_s": {s.recipe: round(plan.seconds((s, c, e)), 1) for s, c, e in plan.steps},
                       "replanned": replanned, "left_out": [recipe for recipe, _ in plan.left_out]}  # fmt: skip
    timings["total_s"] = round(time.perf_counter() - begun, 1)
    (out / "timings.json").write_text(json.dumps(timings, indent=2))
    (out / "summary.json").write_text(json.dumps([r.__dict__ for r in rows], indent=2))
    if pages:
        write_index(out / "index.html", pages, title="medsight demo: validation reports (phantom test sets)")
    return rows
