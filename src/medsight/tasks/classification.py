"""Classification tasks: binary, multi-class, multi-label and ordinal (CORN), with their losses.

A task turns network outputs (logits) into a loss against targets and into probabilities.
Targets use the manifest's conventions: an integer class or grade, or one 0/1 column per
finding where ``nan`` means unknown (that entry is left out of the loss, as CheXpert's
"ignore" policy needs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention

from medsight.core.errors import ConfigError, InputError
from medsight.metrics.classification import quadratic_weighted_kappa, roc_auc

__all__ = ["ClassificationTask", "corn_class_probabilities", "corn_loss"]

Kind = Literal["binary", "multiclass", "multilabel", "ordinal"]


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def corn_loss(logits: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
    """CORN loss (Shi, Cao & Raschka 2021) for ordinal grades ``0..K-1`` from ``K-1`` logits.

    Task ``k`` learns P(grade > k | grade > k-1) on the cases with grade >= k, so the
    predicted cumulative probabilities are monotone by construction. The loss is the sum of
    the binary cross-entropies over all conditional training examples, divided by their number.
    """
    if logits.ndim != 2 or grades.ndim != 1 or logits.shape[0] != grades.shape[0]:
        raise InputError(
            f"CORN needs logits (N, K-1) and grades (N,); got {tuple(logits.shape)}, {tuple(grades.shape)}"
        )
    g = grades.detach().double()
    bad = ~torch.isfinite(g) | (g != torch.round(g)) | (g < 0) | (g > logits.shape[1])
    if bool(bad.any()):
        raise InputError(
            f"CORN grades must be whole numbers 0..{logits.shape[1]} for {logits.shape[1]} logits; "
            f"{int(bad.sum())} are not (e.g. {grades[bad][:3].tolist()})"
        )
    thresholds = torch.arange(logits.shape[1], device=logits.device)
    g = grades.long()[:, None]
    in_task = g >= thresholds[None, :]  # case counts for task k when its grade is at least k
    above = (g > thresholds[None, :]).to(logits.dtype)
    terms = F.binary_cross_entropy_with_logits(logits, above, reduction="none")
    count = in_task.sum()
    if count == 0:
        return logits.sum() * 0.0
    return (terms * in_task).sum() / count


def corn_class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """``(N, K-1)`` CORN logits -> ``(N, K)`` grade probabilities (non-negative, summing to one)."""
    cumulative = torch.cumprod(torch.sigmoid(logits), dim=1)  # P(grade > k)
    ones = torch.ones_like(cumulative[:, :1])
    upper = torch.cat([ones, cumulative], dim=1)  # P(grade > k - 1), with P(grade > -1) = 1
    lower = torch.cat([cumulative, torch.zeros_like(ones)], dim=1)
    return (upper - lower).clamp_min(0.0)


@dataclass(frozen=True)
class ClassificationTask:
    """What a classification network predicts and how it is trained.

    Attributes:
        kind: ``binary`` (one logit), ``multiclass`` (softmax over ``classes``),
            ``multilabel`` (one sigmoid per finding), ``ordinal`` (CORN over ``classes`` grades).
        classes: Class, grade or finding names.
        weights: Per-class loss weights (multiclass), positive weights (binary, multilabel);
            ``None`` for none.
    """

    kind: Kind
    classes: tuple[str, ...]
    weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("binary", "multiclass", "multilabel", "ordinal"):
            raise ConfigError(f"task kind must be binary, multiclass, multilabel or ordinal, got {self.kind!r}")
        minimum = {"binary": 2, "multiclass": 2, "multilabel": 1, "ordinal": 3}[self.kind]
        if len(self.classes) < minimum:
            raise ConfigError(f"a {self.kind} task needs at least {minimum} classes, got {list(self.classes)}")
        if self.kind == "binary" and len(self.classes) != 2:
            raise ConfigError(f"a binary task has two classes (negative, positive), got {list(self.classes)}")
        expected = {"binary": 1, "multiclass": len(self.classes), "multilabel": len(self.classes), "ordinal": 0}
        if self.weights is not None and len(self.weights) != expected[self.kind]:
            raise ConfigError(
                f"{self.kind} weights need {expected[self.kind]} value(s), got {len(self.weights)}"
                + (" (ordinal tasks take no weights; balance by sampling)" if self.kind == "ordinal" else "")
            )

    @property
    def num_outputs(self) -> int:
        """Logits the network must produce."""
        return {"binary": 1, "multiclass": len(self.classes), "multilabel": len(self.classes)}.get(
            self.kind, len(self.classes) - 1
        )

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean loss of a batch; unknown (``nan``) multi-label targets are left out."""
        if logits.shape[0] != targets.shape[0]:
            raise InputError(f"{logits.shape[0]} predictions for {targets.shape[0]} targets")
        weights = None if self.weights is None else torch.tensor(self.weights, dtype=logits.dtype, device=logits.device)
        if self.kind == "binary":
            return F.binary_cross_entropy_with_logits(
                logits.reshape(-1), targets.reshape(-1).to(logits.dtype), pos_weight=weights
            )
        if self.kind == "multiclass":
            return F.cross_entropy(logits, targets.long().reshape(-1), weight=weights)
        if self.kind == "ordinal":
            return corn_loss(logits, targets.reshape(-1))
        known = ~torch.isnan(targets)
        terms = F.binary_cross_entropy_with_logits(
            logits, torch.nan_to_num(targets).to(logits.dtype), pos_weight=weights, reduction="none"
        )
        return (terms * known).sum() / known.sum().clamp_min(1)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Binary: ``(N,)`` P(positive); multi-class and ordinal: ``(N, K)``; multi-label: ``(N, L)``."""
        if self.kind == "binary":
            return torch.sigmoid(logits.reshape(-1))
        if self.kind == "multiclass":
            return torch.softmax(logits, dim=1)
        if self.kind == "ordinal":
            return corn_class_probabilities(logits)
        return torch.sigmoid(logits)

    def predict(self, probabilities: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
        """Hard labels: thresholded (binary, multi-label) or the most likely class/grade."""
        if self.kind in ("binary", "multilabel"):
            return (probabilities >= threshold).long()
        return probabilities.argmax(dim=1)

    def score(
        self, probabilities: torch.Tensor, targets: torch.Tensor, *, referable_grade: int | None = None
    ) -> dict[str, float]:
        """Headline metrics of a prediction set (what early stopping and the summary table use).

        binary: ``auc``; multiclass: ``accuracy``, ``macro_auc``; multilabel: ``macro_auc``
        over findings with both classes present (unknown labels left out) plus one ``auc_<name>``
        each; ordinal: ``qwk`` and, with ``referable_grade``, ``referable_auc``.
        """
        p, y = probabilities.detach().cpu().numpy(), targets.detach().cpu().numpy()
        if self.kind == "binary":
            return {"auc": roc_auc(y.reshape(-1), p.reshape(-1))}
        if self.kind == "multiclass":
            aucs = [roc_auc((y == k).astype(int), p[:, k]) for k in range(p.shape[1])]
            return {"accuracy": float((p.argmax(1) == y).mean()), "macro_auc": _nanmean(aucs)}
        if self.kind == "ordinal":
            out = {"qwk": quadratic_weighted_kappa(y.astype(int), p.argmax(1), n_classes=p.shape[1])}
            if referable_grade is not None:
                out["referable_auc"] = roc_auc((y >= referable_grade).astype(int), p[:, referable_grade:].sum(1))
            return out
        out = {}
        for k, name in enumerate(self.classes):
            known = ~np.isnan(y[:, k])
            out[f"auc_{name}"] = roc_auc(y[known, k].astype(int), p[known, k]) if known.any() else float("nan")
        out["macro_auc"] = _nanmean(list(out.values()))
        return out

    def metric_names(self, *, referable_grade: int | None = None) -> tuple[str, ...]:
        """The names :meth:`score` returns (what early stopping may watch, besides ``loss``)."""
        if self.kind == "binary":
            return ("auc",)
        if self.kind == "multiclass":
            return ("accuracy", "macro_auc")
        if self.kind == "ordinal":
            return ("qwk", "referable_auc") if referable_grade is not None else ("qwk",)
        return (*(f"auc_{name}" for name in self.classes), "macro_auc")

    @staticmethod
    def at_least(probabilities: torch.Tensor, grade: int) -> torch.Tensor:
        """For ordinal tasks: P(grade >= ``grade``), e.g. referable DR = P(ICDR grade >= 2).

        ``grade`` is one of ``1..K-1`` for ``K`` grades (P(grade >= 0) is always 1).
        """
        if probabilities.ndim != 2 or not 1 <= grade < probabilities.shape[1]:
            raise InputError(
                f"at_least needs (N, K) grade probabilities and a grade in 1..K-1; got grade {grade} "
                f"for shape {tuple(probabilities.shape)}"
            )
        return probabilities[:, grade:].sum(dim=1)
