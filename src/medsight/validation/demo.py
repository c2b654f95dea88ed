"""``medsight demo``: phantoms for the three 2D recipes, trained, evaluated and summarised."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from medsight.core.errors import ConfigError
from medsight.core.progress import Progress
from medsight.data.phantoms import make_phantom, phantoms
from medsight.data.registry import build_manifest
from medsight.data.splits import assign_splits
from medsight.engine.classify import train_classifier
from medsight.engine.recipe import load_recipe
from medsight.validation.classification import evaluate_run

__all__ = ["DEMO", "LONG", "DemoRow", "phantom_data", "run_demo"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    recipe: str
    cases: int
    overrides: tuple[str, ...]
    # (label, path into the evaluation report, target)
    headlines: tuple[tuple[str, tuple[str, ...], float], ...]
    stratify: str | None = "target"


_COMMON = ("train.batch_size=32", "train.precision=auto", "evaluation.bootstrap=1000")
DEMO = (
    Step(
        "dr-grading",
        400,
        # 14 epochs at the recipe's lr 0.001: the phantom's lesions are as small and faint as in real
        # photographs, and 10 epochs at 0.002 ended between 0.84 and 0.98 referable AUC from run to run
        (*_COMMON, "preprocess.size=128", "train.epochs=14", "train.early_stopping=null"),
        (("referable-DR AUC", ("referable", "auc"), 0.90), ("QWK", ("metrics", "qwk"), 0.6)),
    ),
    Step(
        "cxr-findings",
        1200,
        (*_COMMON, "preprocess.size=128", "model.name=resnet18", "train.epochs=12", "train.early_stopping=null"),
        (("CXR macro AUC", ("metrics", "macro_auc"), 0.85),),
        stratify=None,
    ),
    Step(
        "mammo-screening",
        200,
        (*_COMMON, "preprocess.size=160", "train.epochs=10", "train.early_stopping=null"),
        (("mammography exam AUC", ("fused", "exam", "auc"), 0.85),),
    ),
)
_QUICK = ("preprocess.size=48", "train.epochs=1", "evaluation.bootstrap=50", "train.precision=fp32")
# the long profile: more cases, larger images and epochs where the standard 10 minutes fall short
LONG: dict[str, tuple[int, tuple[str, ...]]] = {
    "cxr-findings": (1500, ("preprocess.size=160", "train.epochs=14")),
    "mammo-screening": (400, ("preprocess.size=256", "train.epochs=12")),
}
Profile = Literal["quick", "standard", "long"]


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

    @property
    def met(self) -> bool:
        return self.estimate >= self.target


def _dig(report: dict[str, Any], path: tuple[str, ...]) -> dict[str, float]:
    node: Any = report
    for key in path:
        node = node[key]
    return node


def phantom_data(recipe: str, folder: Path, *, cases: int, seed: int, progress: Progress | None = None) -> bool:
    """Make the recipe's phantom in ``folder`` unless it already holds these cases and seed
    (a marker written last says so); True when it was made."""
    marker, wanted = folder / ".complete", {"cases": cases, "seed": seed}
    try:
        if json.loads(marker.read_text()) == wanted:
            return False
    except (OSError, ValueError):
        pass
    make_phantom(recipe, folder, cases=cases, seed=seed, overwrite=True, progress=progress)
    marker.write_text(json.dumps(wanted))
    return True


def run_demo(
    out: str | os.PathLike[str] = "medsight-demo",
    *,
    profile: Profile = "standard",
    seed: int = 0,
    progress: Progress | None = None,
) -> list[DemoRow]:
    """Make, train and evaluate every 2D recipe on phantoms under ``out``; return the headline rows.

    ``standard`` fits about 10 minutes on two CPU cores. ``quick`` shrinks everything (a
    handful of cases, one epoch, tiny images) to check that the whole chain runs; its figures
    mean nothing. ``long`` gives chest X-rays and mammography more cases, larger images and
    more epochs (:data:`LONG`; about 22 minutes on two cores), enough for their targets.
    """
    if profile not in ("quick", "standard", "long"):
        raise ConfigError(f"demo profile must be quick, standard or long, got {profile!r}")
    quick = profile == "quick"
    out = Path(out)
    for folder in (out / "data", out / "runs"):
        folder.mkdir(parents=True, exist_ok=True)
    rows: list[DemoRow] = []
    for step in DEMO:
        started = time.perf_counter()
        cases, extra = LONG.get(step.recipe, (step.cases, ())) if profile == "long" else (step.cases, ())
        cases = max(12, cases // 25) if quick else cases
        data = out / "data" / step.recipe
        phantom_data(step.recipe, data, cases=cases, seed=seed, progress=progress)
        manifest_path = out / f"{step.recipe}.csv"
        manifest = build_manifest(data, format=phantoms()[step.recipe].layout)
        split = assign_splits(manifest, stratify=step.stratify, seed=seed, respect_official=False)
        split.save(manifest_path)
        overrides = [*step.overrides, *extra, *(_QUICK if quick else ()), f"train.seed={seed}"]
        run = out / "runs" / step.recipe
        if run.exists():  # the demo owns its folder: a rerun starts the training afresh
            shutil.rmtree(run)
        train_classifier(load_recipe(step.recipe, overrides), manifest_path, run, progress=progress)
        report = evaluate_run(run, progress=progress)
        seconds = time.perf_counter() - started
        for label, path, target in step.headlines:
            value = _dig(report, path)
            rows.append(DemoRow(step.recipe, label, value["estimate"], value["low"], value["high"], target, seconds))
        log.info("%s done in %.0f s", step.recipe, seconds)
    (out / "summary.json").write_text(json.dumps([r.__dict__ for r in rows], indent=2))
    return rows
