"""Risk: time-to-event prediction (right-censored follow-up) from a table of features, on the task seam.

Each case has a follow-up time and an event flag (1: the event happened then; 0: follow-up ended
without it) in the manifest, and features: image-derived measurements (EF, LV mass, lesion volume,
joined from another model's predictions) and clinical covariates (age, sex...). Two heads:

- ``cox``: one output, the log relative hazard, trained with Cox's partial likelihood (Breslow's
  handling of ties); with the ``linear`` network it is the proportional-hazards model, with ``mlp``
  DeepSurv (Katzman et al. 2018). The baseline cumulative hazard (Breslow) is fitted on the training
  split once training ends, giving survival probabilities.
- ``discrete``: one output per time interval (edges at quantiles of the training event times), the
  conditional probability of the event in it given survival to its start (logistic hazard; Tutz &
  Schmid 2016, Kvamme & Borgan 2021); a case censored in an interval counts as surviving it.

Features are standardised (numbers) or one-hot coded (categories, first level the reference) with
statistics of the training split, kept in the model package. Predictions are ``risk`` (higher means
an earlier event) and ``prob_event_<h>``: the probability of the event by each horizon ``h``.
Evaluation reports Harrell's and Uno's C-index and the cumulative/dynamic AUC at each horizon, each
with a 95 % CI resampling patients, and calibration at each horizon (predicted against Kaplan-Meier).
"""

from __future__ import annotations

import difflib
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from medsight.core.errors import ConfigError, InputError, MedsightError
from medsight.core.progress import Progress
from medsight.core.volume import Volume
from medsight.data.cache import ImageCache, build_image_cache
from medsight.data.dataset import ImageDataset
from medsight.data.manifest import Manifest
from medsight.metrics.bootstrap import bootstrap_cis
from medsight.metrics.survival import cumulative_dynamic_auc, harrell_c, kaplan_meier, uno_c
from medsight.models.fusion import FusionNet
from medsight.models.registry import ModelChoice, build_model
from medsight.tasks.base import Task, TaskData, Training, as_model, register_task
from medsight.tasks.results import Estimate, Prediction
from medsight.transforms.image2d import Augment2D, Preprocess2D, build_augmentation, prepare_image

__all__ = [
    "Feature",
    "RiskPlan",
    "RiskPreprocess",
    "RiskSpec",
    "RiskTask",
    "breslow_cumulative_hazard",
    "cox_loss",
    "logistic_hazard_loss",
]

log = logging.getLogger(__name__)

PROB_PREFIX = "prob_event_"
FEW_EVENTS = 10  # below this many events a C-index is little more than noise: warned


class RiskSpec(BaseModel):
    """A risk recipe's ``task`` section.

    Attributes:
        time: The manifest column of follow-up time (any unit, the same for every case).
        event: The column of the event flag (1 event, 0 censored).
        features: The columns the risk is predicted from: numbers (measurements, age) or categories
            (sex, site; one-hot coded).
        head: ``cox`` (proportional hazards, partial likelihood) or ``discrete`` (logistic hazard per
            time interval).
        intervals: ``discrete``: how many time intervals (at most; edges at training event-time quantiles).
        horizons: Times at which the probability of the event is predicted and the time-dependent AUC
            reported; by default the quartiles of the training event times.
        time_unit: How ``time`` is counted (for display).
        image: A manifest image column read beside the features (multimodal fusion): a 2D network
            (``model.name``, e.g. resnet10) embeds the image, a linear head reads the embedding and
            the features together. None: the features alone (``linear`` or ``mlp``).
    """

    model_config = ConfigDict(extra="forbid")
    kind: Literal["risk"]
    time: str = "time"
    event: str = "event"
    features: list[str] = Field(min_length=1)
    head: Literal["cox", "discrete"] = "cox"
    intervals: int = Field(10, ge=2, le=100)
    horizons: list[float] = []
    time_unit: str = "years"
    image: str | None = None

    @field_validator("horizons")
    @classmethod
    def _increasing(cls, value: list[float]) -> list[float]:
        if any(not math.isfinite(h) or h <= 0 for h in value) or any(b <= a for a, b in pairwise(value)):
            raise ValueError(f"horizons must be positive, finite and increasing, got {value}")
        return value

    @field_validator("features")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        repeated = sorted({f for f in value if value.count(f) > 1})
        if repeated:
            raise ValueError(f"features are listed twice: {repeated}")
        return value

    @model_validator(mode="after")
    def _outcome_is_not_a_feature(self) -> RiskSpec:
        leaked = [c for c in (self.time, self.event) if c in self.features]
        if leaked:
            raise ValueError(f"features include the outcome column(s) {leaked}: a model given the follow-up it is "
                             "scored on learns nothing usable; remove them from task.features")  # fmt: skip
        return self


class RiskPreprocess(BaseModel):
    """A risk recipe's ``preprocess`` section.

    Attributes:
        impute: ``none`` refuses cases with a missing feature (naming them); ``median`` fills a missing
            number with the training median and a missing category with its most common training level.
        image: With ``task.image``: the image's preparation (size, channels, window), as a classifier's.
    """

    model_config = ConfigDict(extra="forbid")
    impute: Literal["none", "median"] = "none"
    image: Preprocess2D = Preprocess2D(size=128, channels=1)  # with task.image: how each image is prepared


class Feature(BaseModel):
    """One network input: a standardised number, or a 0/1 indicator of a category's level."""

    model_config = ConfigDict(extra="forbid")
    name: str  # ``age``; ``sex=M`` for a level
    column: str
    level: str | None = None
    reference: str | None = None  # a category's level coded by all its indicators at 0
    centre: float = 0.0
    scale: float = 1.0
    fill: float | str | None = None  # what a missing value becomes (impute: median)


class RiskPlan(BaseModel):
    """The risk preprocessing resolved on the training split (what the model package keeps).

    Attributes:
        impute: As :class:`RiskPreprocess`.
        features: The network's inputs, in order.
        horizons: Times of the ``prob_event_<h>`` predictions.
        edges: ``discrete``: the interval edges (``edges[0] = 0``).
        baseline_times, baseline_hazard: ``cox``: Breslow's cumulative baseline hazard at each distinct
            training event time (set once training ends).
        image: The image's preparation, for a model that reads one beside the features.
    """

    model_config = ConfigDict(extra="forbid")
    impute: Literal["none", "median"] = "none"
    features: list[Feature]
    horizons: list[float]
    edges: list[float] = []
    baseline_times: list[float] = []
    baseline_hazard: list[float] = []
    image: Preprocess2D | None = None  # the image read beside the features, if any

    @property
    def in_channels(self) -> int:
        return len(self.features)

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        return None if self.image is None else (self.image.channels, self.image.size, self.image.size)


# --- losses and estimators -------------------------------------------------------------------


def cox_loss(log_hazard: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Negative Cox partial log-likelihood (Breslow's ties) per event: for each event, its log
    relative hazard against the log-sum of those of everyone still at risk (time >= its time).

    0 (with a gradient graph) when the batch holds no event."""
    r = log_hazard.reshape(-1).float()
    t = time.reshape(-1).to(r.device, torch.float64)
    e = event.reshape(-1).to(r.device) > 0.5
    if len(r) != len(t) or len(t) != len(e):
        raise InputError(f"{len(r)} risks for {len(t)} times and {len(e)} event flags")
    if not bool(e.any()):
        return r.sum() * 0.0
    order = torch.argsort(t, descending=True)
    r_sorted, t_sorted = r[order], t[order]
    running = torch.logcumsumexp(r_sorted, dim=0)  # log sum over the first k (the latest times)
    # everyone whose time ties with k's is at risk too: read the sum at the last of k's ties
    last = torch.searchsorted(-t_sorted, -t_sorted, right=True) - 1
    terms = r_sorted - running[last]
    return -(terms * e[order]).sum() / e.sum()


def logistic_hazard_loss(logits: torch.Tensor, interval: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of discrete-time hazards ``sigmoid(logits[:, k])``: a case whose follow-up
    ends in interval ``j`` survived every interval before ``j``; in ``j`` it had the event (event 1)
    or survived it (event 0: censored there). Mean over cases."""
    if logits.ndim != 2 or logits.shape[0] != interval.reshape(-1).shape[0]:
        raise InputError(f"hazard logits {tuple(logits.shape)} for {interval.reshape(-1).shape[0]} cases")
    z = logits.float()
    j = interval.reshape(-1).to(z.device).long().clamp(0, z.shape[1] - 1)
    k = torch.arange(z.shape[1], device=z.device)
    target = ((k[None, :] == j[:, None]) & (event.reshape(-1).to(z.device)[:, None] > 0.5)).float()
    seen = (k[None, :] <= j[:, None]).float()
    terms = F.binary_cross_entropy_with_logits(z, target, reduction="none")
    return (terms * seen).sum() / max(len(j), 1)


def breslow_cumulative_hazard(
    log_hazard: np.ndarray, time: np.ndarray, event: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Breslow's baseline cumulative hazard of a fitted Cox model: at each distinct event time ``t``,
    the sum over event times ``s <= t`` of (events at ``s``) / (sum of ``exp(risk)`` of those at risk at ``s``).

    Returns:
        ``(times, cumulative hazard)`` at the distinct event times (empty without events).
    """
    r, t = np.asarray(log_hazard, float).reshape(-1), np.asarray(time, float).reshape(-1)
    e = np.asarray(event, float).reshape(-1) > 0.5
    shift = r.max() if len(r) else 0.0  # exp of large risks overflows; the shift cancels in S(t|x)
    weight = np.exp(r - shift)
    times = np.unique(t[e])
    if len(times) == 0:
        return times, times.copy()
    order = np.argsort(t)
    at_risk = np.cumsum(weight[order][::-1])[::-1]  # sum of weights of those with time >= t_(i)
    first = np.searchsorted(t[order], times, side="left")
    deaths = np.array([np.sum(e & (t == s)) for s in times], float)
    return times, np.cumsum(deaths / at_risk[first]) * math.exp(-shift)


def _hazard_at(times: np.ndarray, hazard: np.ndarray, at: np.ndarray) -> np.ndarray:
    """A step function's value at ``at`` (0 before its first time)."""
    position = np.searchsorted(times, at, side="right") - 1
    return np.where(position >= 0, hazard[np.clip(position, 0, None)], 0.0) if len(times) else np.zeros(len(at))


# --- the task --------------------------------------------------------------------------------


@register_task
@dataclass(frozen=True, eq=False)
class RiskTask(Task):
    """Time-to-event prediction from manifest columns (see the module's description)."""

    risk_spec: RiskSpec

    spec_type = RiskSpec
    preprocess_type = RiskPreprocess
    package_preprocess_type: ClassVar[type[BaseModel] | None] = RiskPlan
    fits_on_validation: ClassVar[bool] = False

    @classmethod
    def from_spec(cls, spec: BaseModel) -> RiskTask:
        return cls(as_model(spec, RiskSpec))

    @property
    def spec(self) -> RiskSpec:
        return self.risk_spec

    @property
    def stratify_by(self) -> str | None:
        return self.risk_spec.event  # events spread evenly over the splits

    @property
    def spatial_dims(self) -> int:
        return 0  # a feature vector per case: no image axes

    # --- data -----------------------------------------------------------------------------
    def cache_spec(self, preprocess: BaseModel) -> BaseModel | None:
        """The image's preparation alone (the features' coding, fitted on the training split, is
        no part of the image cache): training and evaluation then share it."""
        if isinstance(preprocess, RiskPlan):
            return preprocess.image
        return as_model(preprocess, RiskPreprocess).image

    def prepare(
        self, manifest: Manifest, preprocess: BaseModel, folder: str | os.PathLike[str], *, progress: Progress | None
    ) -> TaskData:
        """Code the features (fitting their coding on the training split unless given a plan) and read
        each case's follow-up (NaN where the manifest has none: such cases can be predicted, not scored)."""
        table = manifest.table
        self._require_columns(table)
        time, event = self._outcomes(table)
        if isinstance(preprocess, RiskPlan):
            plan = preprocess
        else:
            plan = self.fit_plan(table, time, event, as_model(preprocess, RiskPreprocess))
        inputs: Any = encode_features(table, plan)
        if plan.image is not None:
            column = self.risk_spec.image or "image"
            cache = build_image_cache(manifest, plan.image, Path(folder) / "images", column=column, progress=progress)
            inputs = FusedInputs(inputs, cache)
        interval = np.full(len(table), np.nan)
        if plan.edges:
            known = np.isfinite(time)
            interval[known] = np.clip(np.searchsorted(plan.edges, time[known], side="left") - 1, 0,
                                      len(plan.edges) - 2)  # fmt: skip
        targets = np.stack([time, event, interval], axis=1).astype(np.float32)
        return TaskData(manifest, inputs, targets, plan, plan.in_channels)

    def _require_columns(self, table: pd.DataFrame) -> None:
        spec = self.risk_spec
        roles = (("features", spec.features), ("time", [spec.time]), ("event", [spec.event]),
                 ("image", [spec.image] if spec.image else []))  # fmt: skip
        for role, columns in roles:
            missing = [c for c in columns if c not in table.columns]
            if missing:
                hints = [f"{c!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(
                    c, list(table.columns), n=1)) else repr(c) for c in missing]  # fmt: skip
                raise ConfigError(
                    f"task.{role}: the manifest has no column {', '.join(hints)}; its columns: {list(table.columns)}. "
                    "Add them with `medsight data join MANIFEST TABLE` (e.g. a clinical table or another model's "
                    "predictions)"
                )

    def _outcomes(self, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Follow-up times and event flags as numbers; NaN where missing. Unreadable values are errors."""
        spec = self.risk_spec
        out = []
        for column in (spec.time, spec.event):
            raw = table[column]
            values = pd.to_numeric(raw, errors="coerce").to_numpy(np.float64)
            bad = np.isnan(values) & raw.notna().to_numpy() & (raw.astype(str).str.strip() != "").to_numpy()
            if column == spec.event:
                bad |= np.isfinite(values) & ~np.isin(values, (0.0, 1.0))
            else:
                bad |= np.isfinite(values) & (values < 0)
            if bad.any():
                cases = table.loc[bad, "case_id"].astype(str).tolist()[:3]
                what = "0 (censored) or 1 (event)" if column == spec.event else "a non-negative number"
                raise InputError(f"{column} must be {what}; {int(bad.sum())} case(s) have "
                                 f"{raw[bad].astype(str).tolist()[:3]} (cases {cases})")  # fmt: skip
            out.append(values)
        return out[0], out[1]

    def fit_plan(
        self, table: pd.DataFrame, time: np.ndarray, event: np.ndarray, preprocess: RiskPreprocess
    ) -> RiskPlan:
        """The feature coding, horizons and intervals, from the training split's cases."""
        train = (table["split"] == "train").to_numpy()
        if not train.any():
            raise InputError("the manifest has no train cases to fit the feature coding on")
        known = train & np.isfinite(time) & np.isfinite(event)
        if int(event[known].sum()) < 2:
            raise InputError(f"the train split has {int(event[known].sum())} event(s) with a follow-up time; a risk "
                             "model needs events to learn from")  # fmt: skip
        features: list[Feature] = []
        for column in self.risk_spec.features:
            features.extend(_code_column(table.loc[train, column], column, preprocess.impute))
        times = time[known & (event == 1)]
        horizons = list(self.risk_spec.horizons) or _default_horizons(times)
        edges: list[float] = []
        if self.risk_spec.head == "discrete":
            inner = np.unique(np.quantile(times, np.linspace(0, 1, self.risk_spec.intervals + 1)[1:-1]))
            edges = [0.0, *[float(x) for x in inner if x > 0], float(np.max(time[known]))]
            edges = sorted(set(edges))
        image = preprocess.image if self.risk_spec.image else None
        return RiskPlan(impute=preprocess.impute, features=features, horizons=horizons, edges=edges, image=image)

    def check(self, data: TaskData, splits: Mapping[str, np.ndarray]) -> None:
        for split, rows in splits.items():
            time, event = data.targets[rows, 0], data.targets[rows, 1]
            missing = ~(np.isfinite(time) & np.isfinite(event))
            if missing.any():
                cases = data.manifest.table["case_id"].iloc[rows[missing]].astype(str).tolist()[:3]
                raise InputError(
                    f"{int(missing.sum())} {split} case(s) have no {self.risk_spec.time} or {self.risk_spec.event} "
                    f"(e.g. {cases}); a risk model learns from and is checked on followed-up cases: fill them or "
                    "move those cases out of the train and val splits"
                )
            if np.nansum(event) < 1:
                raise InputError(f"the {split} split has no event: a C-index needs at least one")

    def dataset(self, data: TaskData, indices: np.ndarray) -> Dataset:
        if isinstance(data.inputs, FusedInputs):
            return _FusedDataset(data.inputs, data.targets, indices, None)
        return TensorDataset(torch.from_numpy(np.asarray(data.inputs[indices], np.float32)),
                             torch.from_numpy(data.targets[indices]))  # fmt: skip

    def training(self, data: TaskData, indices: np.ndarray, *, balance: str, augment: BaseModel, seed: int) -> Training:
        if balance != "none":
            raise ConfigError(f"balance: {balance} re-weights classes; a risk model has none (use balance: none)")
        if isinstance(data.inputs, FusedInputs):  # images are augmented per item, as the recipe's augment says
            flips = build_augmentation(as_model(augment, Augment2D), seed=seed)
            return Training(loss=self.loss, train_set=_FusedDataset(data.inputs, data.targets, indices, flips))
        return Training(loss=self.loss, train_set=self.dataset(data, indices))

    def input_array(self, volume: Volume, preprocess: BaseModel, *, slice_index: int | None = None) -> np.ndarray:
        raise ConfigError(
            "a risk model reads a table of features, not images: predict with `medsight predict RUN TABLE.csv` "
            "(one row per case, with the model's feature columns)"
        )

    # --- network ----------------------------------------------------------------------------
    def example_input(self, preprocess: BaseModel, in_channels: int) -> torch.Tensor:
        """A row of the features (and, for a model that reads an image too, its pixels after them)."""
        shape = as_model(preprocess, RiskPlan).image_shape
        return torch.zeros(1, in_channels + (int(np.prod(shape)) if shape is not None else 0))

    def network(self, model: ModelChoice, in_channels: int, preprocess: BaseModel) -> nn.Module:
        """The recipe's tabular network (``linear`` or ``mlp``), one output (cox) or one per interval."""
        plan = as_model(preprocess, RiskPlan)
        outputs = 1 if self.risk_spec.head == "cox" else len(plan.edges) - 1
        if plan.image_shape is None:
            return build_model(model.name, in_channels=in_channels, num_outputs=outputs, dropout=model.dropout,
                               tabular=True)  # fmt: skip
        if model.pretrained:
            raise ConfigError("model.pretrained is not read into a risk model of images and features yet; leave it out")
        encoder = build_model(model.name, spatial_dims=2, in_channels=plan.image_shape[0], num_outputs=EMBEDDING,
                              pooling=model.pooling, dropout=model.dropout)  # fmt: skip
        return FusionNet(encoder, in_channels, plan.image_shape, EMBEDDING, outputs)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.risk_spec.head == "cox":
            return cox_loss(outputs[:, 0], targets[:, 0], targets[:, 1])
        return logistic_hazard_loss(outputs, targets[:, 2], targets[:, 1])

    def risk(self, outputs: torch.Tensor, plan: RiskPlan | None = None) -> np.ndarray:
        """One risk score per case (higher: earlier event): the log relative hazard (cox), or the
        cumulative hazard ``-log S(h)`` by the last horizon ``h`` (discrete; without a plan, over every
        interval). The sparse intervals past the horizons would otherwise add noise to the ranking."""
        z = outputs.float()
        if self.risk_spec.head == "cox":
            return z[:, 0].numpy().astype(np.float64)
        if plan is None or not plan.edges or not plan.horizons:
            return F.softplus(z).sum(dim=1).numpy().astype(np.float64)  # -log(1 - sigmoid(z)) summed
        survival = survival_curves(torch.sigmoid(z).numpy(), np.asarray(plan.edges), np.asarray(plan.horizons[-1:]))
        return -np.log(np.clip(survival[:, 0], 1e-300, 1.0))

    def score(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        time, event = targets[:, 0].numpy(), targets[:, 1].numpy()
        risk = self.risk(outputs)
        if not np.all(np.isfinite(risk)):
            return {"c_index": float("nan")}
        return {"c_index": harrell_c(time, event, risk)}

    def metric_names(self) -> tuple[str, ...]:
        return ("c_index",)

    # --- predictions ------------------------------------------------------------------------
    def scores(self, outputs: torch.Tensor, plan: RiskPlan | None = None) -> pd.DataFrame:
        return pd.DataFrame({"risk": self.risk(outputs, plan)})

    def event_probabilities(self, outputs: torch.Tensor, plan: RiskPlan) -> pd.DataFrame:
        """``prob_event_<h>``: each case's probability of the event by each horizon."""
        columns: dict[str, np.ndarray] = {}
        at = np.asarray(plan.horizons, float)
        if self.risk_spec.head == "cox":
            if not plan.baseline_times:
                raise ConfigError("the model package has no baseline hazard (training did not finish): train it again")
            base = _hazard_at(np.asarray(plan.baseline_times), np.asarray(plan.baseline_hazard), at)
            lp = self.risk(outputs)
            for h, h0 in zip(plan.horizons, base, strict=True):
                columns[f"{PROB_PREFIX}{h:g}"] = 1.0 - np.exp(-h0 * np.exp(np.clip(lp, -50, 50)))
        else:
            survival = survival_curves(torch.sigmoid(outputs.float()).numpy(), np.asarray(plan.edges), at)
            for k, h in enumerate(plan.horizons):
                columns[f"{PROB_PREFIX}{h:g}"] = 1.0 - survival[:, k]
        return pd.DataFrame(columns)

    def predictions(self, outputs: torch.Tensor, preprocess: BaseModel) -> pd.DataFrame:
        """``risk`` and ``prob_event_<h>`` of network outputs (a discrete model's survival curves are
        computed once: its risk is read off the last horizon's probability)."""
        plan = as_model(preprocess, RiskPlan)
        probabilities = self.event_probabilities(outputs, plan)
        if self.risk_spec.head == "discrete" and plan.edges and plan.horizons:
            survival = 1.0 - probabilities[f"{PROB_PREFIX}{plan.horizons[-1]:g}"].to_numpy()
            risk = pd.DataFrame({"risk": -np.log(np.clip(survival, 1e-300, 1.0))})
        else:
            risk = self.scores(outputs, plan)
        return pd.concat([risk, probabilities], axis=1)

    def predict_split(
        self, model: nn.Module, data: TaskData, indices: np.ndarray, *, batch_size: int = 64
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Each case's ``risk`` and its ``prob_event_<h>`` at the plan's horizons."""
        from medsight.models.predict import run_model

        outputs = run_model(model, self.dataset(data, indices), batch_size=max(batch_size, 256))
        return data.manifest.table.iloc[indices].reset_index(drop=True), self.predictions(outputs, data.preprocess)

    def predict_table(self, model: nn.Module, table: pd.DataFrame, preprocess: BaseModel) -> pd.DataFrame:
        """``risk`` and ``prob_event_<h>`` for each row of a table of new cases (the model's feature columns)."""
        plan = as_model(preprocess, RiskPlan)
        inputs = torch.from_numpy(encode_features(table, plan))
        if plan.image is not None:
            inputs = torch.cat([inputs, torch.from_numpy(self._table_images(table, plan)).flatten(1)], dim=1)
        with torch.no_grad():
            outputs = model.eval()(inputs).float()
        return self.predictions(outputs, plan)

    def _table_images(self, table: pd.DataFrame, plan: RiskPlan) -> np.ndarray:
        """The images a table's rows name (paths relative to the table's folder, ``table.attrs['root']``),
        prepared as in training, as floats in [0, 1]."""
        from medsight.io import read

        column = self.risk_spec.image or "image"
        if column not in table.columns:
            raise ConfigError(f"the model reads an image from column {column!r}, which this table lacks")
        root = Path(table.attrs.get("root", "."))
        out = []
        names = table["case_id"].astype(str) if "case_id" in table.columns else pd.Series(range(1, len(table) + 1))
        for case, cell in zip(names.astype(str), table[column], strict=True):
            if not isinstance(cell, str) or not cell.strip():
                raise InputError(f"case {case}: no image in column {column!r}")
            path = Path(cell) if Path(cell).is_absolute() else root / cell
            try:
                volume = read(path)
            except MedsightError as exc:
                raise type(exc)(f"case {case}: {exc}") from exc
            out.append(prepare_image(volume, plan.image).astype(np.float32) / 255.0)  # type: ignore[arg-type]
        return np.stack(out)

    def settle(
        self, model: nn.Module, data: TaskData, indices: np.ndarray, *, progress: Progress | None = None
    ) -> BaseModel:
        """Cox: Breslow's baseline cumulative hazard on the training split, with the trained weights."""
        plan = as_model(data.preprocess, RiskPlan)
        if self.risk_spec.head != "cox":
            return plan
        from medsight.models.predict import run_model

        train = data.indices("train")
        outputs = run_model(model, self.dataset(data, train), batch_size=1024)
        times, hazard = breslow_cumulative_hazard(self.risk(outputs), data.targets[train, 0], data.targets[train, 1])
        return plan.model_copy(update={"baseline_times": times.tolist(), "baseline_hazard": hazard.tolist()})

    # --- evaluation -------------------------------------------------------------------------
    def evaluate(
        self, val: Prediction, test: Prediction, *, split: str, operating_points: Sequence[str], bootstrap: int
    ) -> tuple[dict[str, Estimate], dict[str, Any], list[str]]:
        """Harrell's and Uno's C-index (Uno's truncated at the last horizon) and the cumulative/dynamic
        AUC of ``prob_event_<h>`` at each horizon, each with a patient-bootstrap CI; calibration by
        risk quarter at each horizon (mean predicted against Kaplan-Meier)."""
        spec = self.risk_spec
        table = test.table()
        time = pd.to_numeric(table[spec.time], errors="coerce").to_numpy(float)
        event = pd.to_numeric(table[spec.event], errors="coerce").to_numpy(float)
        known = np.isfinite(time) & np.isfinite(event)
        warnings: list[str] = []
        if not known.all():
            warnings.append(
                f"{int((~known).sum())} {split} case(s) have no follow-up; they are left out of the figures"
            )
        table, time, event = table[known].reset_index(drop=True), time[known], event[known] == 1
        horizons = sorted(float(c.removeprefix(PROB_PREFIX)) for c in table.columns if c.startswith(PROB_PREFIX))
        columns = [f"{PROB_PREFIX}{h:g}" for h in horizons]
        risk = table["risk"].to_numpy(float)
        probabilities = table[columns].to_numpy(float) if columns else np.zeros((len(table), 0))
        groups = table["patient_id"].astype(str).to_numpy()
        events = int(event.sum())
        details: dict[str, Any] = {
            "cases": len(table), "events": events, "horizons": horizons, "time_unit": spec.time_unit,
            "median_follow_up": float(np.median(time)) if len(time) else None, "head": spec.head,
            "time_column": spec.time, "event_column": spec.event,
        }  # fmt: skip
        if events < FEW_EVENTS:
            warnings.append(f"the {split} split has {events} event(s): every C-index and AUC is very uncertain "
                            f"(fewer than {FEW_EVENTS})")  # fmt: skip
        followed = [h for h in horizons if events and time[event].min() <= h < time.max()]
        if len(followed) < len(horizons):
            warnings.append(f"horizons {[h for h in horizons if h not in followed]} lie outside this split's "
                            "follow-up: their AUC is undefined")  # fmt: skip
        tau = max(followed) if followed else None
        names = ["harrell c", "uno c", *[f"td auc {h:g}" for h in horizons]]
        positions = [horizons.index(h) for h in followed]

        def figures_of(t: np.ndarray, e: np.ndarray, r: np.ndarray, p: np.ndarray) -> list[float]:
            values = [_safe(harrell_c, t, e, r), _safe(uno_c, t, e, r, tau=tau)]
            aucs = [float("nan")] * len(horizons)
            for k in positions:
                aucs[k] = _safe(lambda *a, k=k: float(cumulative_dynamic_auc(*a)[0][0]), t, e, p[:, k],
                                [horizons[k]])  # fmt: skip
            return values + aucs

        results = bootstrap_cis(figures_of, time, event, risk, probabilities, names=names, groups=groups,
                                n_resamples=bootstrap)  # fmt: skip
        figures = {name: Estimate.of(result) for name, result in zip(names, results, strict=True)}
        details["figures"] = dict(zip(names, results, strict=True))
        details["calibration"] = {f"{h:g}": _calibration(time, event, probabilities[:, k], h)
                                  for k, h in enumerate(horizons)}  # fmt: skip
        for message in warnings:
            log.warning(message)
        return figures, details, warnings


EMBEDDING = 32  # width of an image's embedding beside the features


@dataclass(frozen=True)
class FusedInputs:
    """A risk model's inputs when it reads an image beside the features."""

    features: np.ndarray  # (N, F) coded features
    images: ImageCache  # (N, C, S, S) prepared images


class _FusedDataset(Dataset):
    """Items ``(features then pixels as one flat float vector, target)`` (:class:`FusionNet`'s input)."""

    def __init__(self, inputs: FusedInputs, targets: np.ndarray, indices: np.ndarray, augment: Any) -> None:
        self.images = ImageDataset(inputs.images, targets, indices, augment)
        self.features = torch.from_numpy(np.asarray(inputs.features, np.float32))
        self.indices = np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, target = self.images[item]
        return torch.cat([self.features[int(self.indices[item])], image.reshape(-1).float()]), target


def _safe(metric: Any, *args: Any, **kwargs: Any) -> float:
    """A survival figure, NaN where a resample leaves it undefined (no comparable pair, no case by a horizon)."""
    try:
        value = float(metric(*args, **kwargs))
    except InputError:
        return float("nan")
    return value


def _calibration(time: np.ndarray, event: np.ndarray, predicted: np.ndarray, horizon: float) -> list[dict[str, float]]:
    """Per quarter of predicted risk by ``horizon``: cases, mean predicted probability of the event by
    then, and the Kaplan-Meier probability observed (None where the quarter's follow-up ends earlier)."""
    if len(predicted) < 8:
        return []
    edges = np.quantile(predicted, [0.25, 0.5, 0.75])
    band = np.searchsorted(edges, predicted, side="right")
    rows = []
    for b in range(4):
        rows_b = band == b
        if not rows_b.any():
            continue
        times, survival = kaplan_meier(time[rows_b], event[rows_b])
        observed = None
        if times[-1] >= horizon or survival[-1] == 0:
            observed = (
                float(1.0 - _hazard_at(times, survival, np.array([horizon]))[0]) if (times <= horizon).any() else 0.0
            )
        rows.append({"quarter": b + 1, "cases": int(rows_b.sum()), "predicted": float(predicted[rows_b].mean()),
                     "observed": observed})  # fmt: skip
    return rows


def survival_curves(hazards: np.ndarray, edges: np.ndarray, at: np.ndarray) -> np.ndarray:
    """``(N, len(at))`` survival at times ``at`` from discrete hazards ``(N, K)`` over intervals ``edges``
    (``K + 1`` edges): the product of ``1 - h`` over the intervals passed, interpolated linearly within
    the one ``at`` falls in (constant event density); held after the last edge."""
    h = np.clip(np.asarray(hazards, float), 0.0, 1.0)
    survival_at_edges = np.concatenate([np.ones((len(h), 1)), np.cumprod(1.0 - h, axis=1)], axis=1)
    out = np.empty((len(h), len(at)))
    for k, moment in enumerate(at):
        j = int(np.clip(np.searchsorted(edges, moment, side="right") - 1, 0, len(edges) - 2))
        width = edges[j + 1] - edges[j]
        fraction = float(np.clip((moment - edges[j]) / width, 0.0, 1.0)) if width > 0 else 1.0
        out[:, k] = survival_at_edges[:, j] + fraction * (survival_at_edges[:, j + 1] - survival_at_edges[:, j])
    return out


def _default_horizons(event_times: np.ndarray) -> list[float]:
    """The quartiles of the training event times, rounded to two significant figures."""
    quartiles = np.quantile(event_times, [0.25, 0.5, 0.75])
    rounded = sorted({float(f"{q:.2g}") for q in quartiles if q > 0})
    return rounded or [float(np.max(event_times))]


def _code_column(values: pd.Series, column: str, impute: str) -> list[Feature]:
    """The network inputs of one manifest column, coded on its training values."""
    present = values[values.notna() & (values.astype(str).str.strip() != "")]
    if present.empty:
        raise InputError(f"feature {column!r} has no value in the train split")
    numbers = pd.to_numeric(present, errors="coerce")
    if numbers.notna().all():
        x = numbers.to_numpy(float)
        scale = float(x.std())
        if scale == 0.0:
            raise InputError(f"feature {column!r} is {x[0]:g} for every training case: it cannot inform the risk; "
                             "remove it from task.features")  # fmt: skip
        fill = float(np.median(x)) if impute == "median" else None
        return [Feature(name=column, column=column, centre=float(x.mean()), scale=scale, fill=fill)]
    levels = present.astype(str).str.strip()
    counts = levels.value_counts()
    if len(counts) < 2:
        raise InputError(f"feature {column!r} is {counts.index[0]!r} for every training case: it cannot inform the "
                         "risk; remove it from task.features")  # fmt: skip
    if len(counts) > 20:
        raise InputError(f"feature {column!r} has {len(counts)} different values that are not numbers (e.g. "
                         f"{counts.index[:3].tolist()}): a category with that many levels cannot be learnt from; "
                         "give numbers or fewer levels")  # fmt: skip
    ordered = sorted(counts.index)
    fill = str(counts.index[0]) if impute == "median" else None
    return [Feature(name=f"{column}={level}", column=column, level=str(level), reference=str(ordered[0]), fill=fill)
            for level in ordered[1:]]  # fmt: skip


def encode_features(table: pd.DataFrame, plan: RiskPlan) -> np.ndarray:
    """``(N, F)`` float32 network inputs of a table's cases (the plan's coding).

    Raises:
        ConfigError: a feature column is missing.
        InputError: a missing value (without imputation), a non-number in a number column, or a level
            training never saw (each naming the cases).
    """
    out = np.zeros((len(table), len(plan.features)), np.float32)
    for k, feature in enumerate(plan.features):
        if feature.column not in table.columns:
            raise ConfigError(f"the model reads column {feature.column!r}, which this table lacks; "
                              f"its columns: {list(table.columns)}")  # fmt: skip
        raw = table[feature.column]
        blank = (raw.isna() | (raw.astype(str).str.strip() == "")).to_numpy()
        if blank.any():
            if feature.fill is None:
                cases = _cases(table, blank)
                raise InputError(f"{int(blank.sum())} case(s) have no {feature.column} (e.g. {cases}); fill it, or "
                                 "set preprocess.impute: median to use the training median")  # fmt: skip
            raw = raw.astype(object).where(~blank, feature.fill)
        if feature.level is None:
            values = pd.to_numeric(raw, errors="coerce").to_numpy(float)
            bad = ~np.isfinite(values)
            if bad.any():
                raise InputError(f"{feature.column} must be a number; case(s) {_cases(table, bad)} have "
                                 f"{raw[bad].astype(str).tolist()[:3]}")  # fmt: skip
            out[:, k] = (values - feature.centre) / feature.scale
        else:
            levels = raw.astype(str).str.strip()
            known = {str(f.level) for f in plan.features if f.column == feature.column} | {str(feature.reference)}
            unseen = ~levels.isin(known).to_numpy()
            if unseen.any():
                raise InputError(
                    f"{feature.column}: value(s) {sorted(set(levels[unseen]))[:3]} of case(s) "
                    f"{_cases(table, unseen)} were never seen in training (known: {sorted(known)})"
                )
            out[:, k] = (levels == feature.level).to_numpy(np.float32)
    return out


def _cases(table: pd.DataFrame, mask: np.ndarray) -> list[str]:
    column = "case_id" if "case_id" in table.columns else table.columns[0]
    return table.loc[mask, column].astype(str).tolist()[:3]
