"""A 3D detector's second stage: its candidates rescored by what the image looks like around them.

The detector's false positives on chest CT sit on vessels (tubes, bright in one cross-section),
its findings are blobs. LUNA16's false-positive-reduction track scores each candidate again from
the image around it; here that is a logistic model of a few numbers per candidate and of their
pairwise products (:func:`model_terms`), in NumPy and SciPy alone (so the torch-free runtime
rescores too):

- ``logit``: the network's log-odds, ``log_diameter``: the candidate's size, ``value``: the image
  at its centre;
- at each scale ``s`` of :data:`SCALES` (mm, Gaussian derivatives, scale-normalised): the
  Hessian's eigenvalues ``l1_s, l2_s, l3_s`` (largest magnitude first) where Li et al.'s dot
  filter (2003: ``l3^2 / |l1|`` where all three are negative, i.e. bright in every direction)
  is highest within one voxel of the centre, that filter's log ``dot_s``, and the smoothed image
  ``mean_s`` at the centre.

:func:`fit_rescoring` fits the model on the validation scans' candidates (labelled by whether
they lie within a finding, as LUNA16 counts a hit) once training ends
(:meth:`~medsight.tasks.detection.DetectionTask.settle`); the plan keeps the weights
(:class:`~medsight.planning.CandidateRescoring`) and :func:`rescore` applies them to every
prediction.

The same features say how big a finding is: the scale at which the dot filter peaks follows the
blob's radius, while the network's diameter (of its probability region at half the peak) is
several voxels wide however small the finding. :func:`fit_sizes` regresses the log diameter of the
finding each candidate lies on from them; the stage keeps that size model only where it is closer
to the annotated sizes than the network's own diameters in cross-validation.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from scipy import ndimage

from medsight.core.errors import InputError
from medsight.core.geometry import Geometry
from medsight.planning import CandidateRescoring

__all__ = ["FEATURES", "SCALES", "candidate_features", "fit_rescoring", "fit_sizes", "model_terms", "rescore"]

log = logging.getLogger(__name__)

SCALES = (1.0, 1.6, 2.5, 4.0)
"""Gaussian scales (mm) of the Hessian: a ball of diameter d responds most at ~d / (2 sqrt(3))."""
FEATURES = (
    "logit",
    "log_diameter",
    "value",
    *(f"{name}_{s:g}" for s in SCALES for name in ("dot", "l1", "l2", "l3", "mean")),
)
_MIN_EACH = 5  # candidates on findings, and off them, needed to fit the model
_MIN_SIZES = 10  # candidates on findings needed to fit the size model
# the pairwise model's inverse L2 strength (scikit-learn's C). Lung phantom (45 test scans, the stage fitted
# on 38 validation and 100 training scans): CPM 0.812 with the features alone, 0.828 / 0.838 / 0.831 with
# their products at C = 0.03 / 0.1 / 0.3; grouped 5-fold cross-validation over those scans agreed
_PAIRS_STRENGTH = 0.1
_PROBABILITY_FLOOR = 1e-4  # the network's probability is clipped to [floor, 1 - floor] for its logit


def candidate_features(image: np.ndarray, geometry: Geometry, candidates: pd.DataFrame) -> np.ndarray:
    """The :data:`FEATURES` of each candidate (``coordX, coordY, coordZ`` world mm, ``diameter_mm``,
    ``probability``) in an image ``(Z, Y, X)`` on ``geometry``'s grid: ``(N, len(FEATURES))`` float32.

    Raises:
        InputError: the image is not one 3D channel.
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise InputError(f"candidates are rescored on one 3D channel (Z, Y, X); got shape {image.shape}")
    out = np.zeros((len(candidates), len(FEATURES)), np.float32)
    if not len(candidates):
        return out
    spacing = np.asarray(geometry.spacing, float)
    shape = np.array(image.shape)
    reach = np.ceil((3 * max(SCALES) + 3) / spacing).astype(int)  # the cube the filters need
    centres = geometry.world_to_index(candidates[["coordX", "coordY", "coordZ"]].to_numpy(float))
    probability = np.clip(candidates["probability"].to_numpy(float), _PROBABILITY_FLOOR, 1 - _PROBABILITY_FLOOR)
    out[:, 0] = np.log(probability / (1 - probability))
    out[:, 1] = np.log1p(np.maximum(candidates["diameter_mm"].to_numpy(float), 0.0))
    for n, centre in enumerate(centres):
        at = np.clip(np.rint(centre).astype(int), 0, shape - 1)
        low, high = np.maximum(at - reach, 0), np.minimum(at + reach + 1, shape)
        cube = np.asarray(image[tuple(slice(a, b) for a, b in zip(low, high, strict=True))], np.float32)
        inside = at - low
        near = tuple(slice(max(i - 1, 0), i + 2) for i in inside)
        row = [float(cube[tuple(inside)])]
        for scale in SCALES:
            row.extend(_hessian_features(cube, spacing, scale, tuple(inside), near))
        out[n, 2:] = row
    return out


def _hessian_features(
    cube: np.ndarray, spacing: np.ndarray, scale: float, centre: tuple[int, ...], near: tuple[slice, ...]
) -> list[float]:
    """``dot, l1, l2, l3, mean`` at one scale (see the module's description)."""
    sigma = scale / spacing
    hessian = np.empty((*cube[near].shape, 3, 3), np.float32)
    for i in range(3):
        for j in range(i, 3):
            order = [0, 0, 0]
            order[i] += 1
            order[j] += 1
            # scale-normalised second derivative in mm (the whole cube filtered, the centre's neighbours kept)
            d = ndimage.gaussian_filter(cube, sigma, order=order, mode="nearest")[near]
            hessian[..., i, j] = hessian[..., j, i] = d * scale**2 / (spacing[i] * spacing[j])
    values = np.linalg.eigvalsh(hessian.reshape(-1, 3, 3))
    values = np.take_along_axis(values, np.argsort(-np.abs(values), axis=1), axis=1)  # |l1| >= |l2| >= |l3|
    bright = (values < 0).all(axis=1)
    dot = np.where(bright, values[:, 2] ** 2 / np.maximum(np.abs(values[:, 0]), 1e-6), 0.0)
    best = int(np.argmax(dot)) if bright.any() else int(np.argmin(values[:, 0]))
    mean = float(ndimage.gaussian_filter(cube, sigma, mode="nearest")[centre])
    return [float(np.log1p(dot.max())), *(float(v) for v in values[best]), mean]


def fit_rescoring(
    features: np.ndarray, on_finding: np.ndarray, diameters: np.ndarray | None = None
) -> CandidateRescoring | None:
    """The logistic model of ``on_finding`` (bool per candidate) from ``features``
    (:func:`candidate_features`), standardised, and their pairwise products
    (:func:`model_terms`), L2-regularised (inverse strength :data:`_PAIRS_STRENGTH`); None when
    fewer than 5 candidates lie on a finding or off one (too few to fit on). With ``diameters``
    (mm of the finding each candidate lies on, NaN off findings), also the size model
    (:func:`fit_sizes`)."""
    from sklearn.linear_model import LogisticRegression

    features = np.asarray(features, float)
    on_finding = np.asarray(on_finding, bool)
    hits = int(on_finding.sum())
    if hits < _MIN_EACH or len(on_finding) - hits < _MIN_EACH:
        log.info("candidates are not rescored: %d of %d validation candidates lie on a finding (%d of each needed)",
                 hits, len(on_finding), _MIN_EACH)  # fmt: skip
        return None
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale = np.where(scale > 1e-8, scale, 1.0)
    standard = (features - mean) / scale
    model = LogisticRegression(C=_PAIRS_STRENGTH, max_iter=5000).fit(model_terms(standard, pairs=True), on_finding)
    sized = None
    if diameters is not None:
        known = on_finding & np.isfinite(np.asarray(diameters, float)) & (np.asarray(diameters, float) > 0)
        sized = fit_sizes(standard[known], np.asarray(diameters, float)[known], _network_diameters(features[known]))
    return CandidateRescoring(features=list(FEATURES), mean=mean.tolist(), scale=scale.tolist(),
                              coef=model.coef_[0].tolist(), intercept=float(model.intercept_[0]), pairs=True,
                              candidates=len(on_finding), findings=hits,
                              size_coef=None if sized is None else sized[0],
                              size_intercept=None if sized is None else sized[1],
                              size_range=None if sized is None else sized[2])  # fmt: skip


def model_terms(standard: np.ndarray, *, pairs: bool) -> np.ndarray:
    """What the logistic model weighs, per candidate: its standardised features ``(N, n)``, and with
    ``pairs`` the product of every pair of them (squares included, ``numpy.triu_indices`` order):
    ``(N, n + n (n + 1) / 2)``. The products let one feature's weight depend on another (a shape
    feature's on the candidate's size or the network's confidence), which one weight per feature
    cannot."""
    standard = np.asarray(standard, float)
    if not pairs:
        return standard
    first, second = np.triu_indices(standard.shape[1])
    return np.concatenate([standard, standard[:, first] * standard[:, second]], axis=1)


def _network_diameters(features: np.ndarray) -> np.ndarray:
    """The candidates' own diameters (mm), back from their ``log_diameter`` feature."""
    return np.expm1(np.asarray(features, float)[:, FEATURES.index("log_diameter")])


def fit_sizes(
    standard: np.ndarray, diameters: np.ndarray, network: np.ndarray, *, folds: int = 5
) -> tuple[list[float], float, tuple[float, float]] | None:
    """A ridge regression of ``log(diameter)`` on standardised features (candidates on findings,
    their findings' annotated ``diameters`` in mm), its strength chosen by leave-one-out (within
    each fold too, in the cross-validation), as
    ``(coef, intercept, range)`` (range: half the smallest and twice the largest diameter); None
    when fewer than :data:`_MIN_SIZES` candidates are given, or when in ``folds``-fold
    cross-validation its median relative error is no lower than that of the network's own
    diameters (``network``): a size model that does not help is not kept."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_predict

    if len(diameters) < _MIN_SIZES:
        log.info("the candidates' diameters stay the network's: %d candidates on findings to fit a size model on "
                 "(%d needed)", len(diameters), _MIN_SIZES)  # fmt: skip
        return None
    target = np.log(diameters)
    strengths = np.logspace(-2, 3, 11)
    chosen = RidgeCV(alphas=strengths).fit(standard, target)
    # nested: each fold picks its own strength on its own training part, so the comparison with the
    # network's diameters is not flattered by a strength chosen on the held-out candidates too
    split = KFold(n_splits=min(folds, len(target)), shuffle=True, random_state=0)
    predicted = np.exp(cross_val_predict(RidgeCV(alphas=strengths), standard, target, cv=split))
    mine = float(np.median(np.abs(predicted - diameters) / diameters))
    theirs = float(np.median(np.abs(network - diameters) / diameters))
    log.info("size model: median relative diameter error %.1f %% in cross-validation against the network's %.1f %% "
             "(%d candidates on findings)", 100 * mine, 100 * theirs, len(target))  # fmt: skip
    if not mine < theirs:
        return None
    bounds = (float(diameters.min()) / 2, float(diameters.max()) * 2)
    return [float(c) for c in chosen.coef_], float(chosen.intercept_), bounds


def rescore(candidates: pd.DataFrame, image: np.ndarray, geometry: Geometry, model: CandidateRescoring) -> pd.DataFrame:
    """``candidates`` with ``probability`` from ``model`` (the network's kept as
    ``network_probability``) and, where it has a size model, ``diameter_mm`` from it (the network's
    kept as ``network_diameter_mm``), the most probable first.

    Raises:
        InputError: the model was fitted on other features than this version computes.
    """
    if tuple(model.features) != FEATURES:
        raise InputError(f"the plan's candidate rescoring reads features {model.features}; this version computes "
                         f"{list(FEATURES)}: train the detector again")  # fmt: skip
    if not len(candidates):
        return candidates.assign(network_probability=candidates["probability"])
    features = candidate_features(image, geometry, candidates)
    standard = (features - np.asarray(model.mean)) / np.asarray(model.scale)
    z = model.intercept + model_terms(standard, pairs=model.pairs) @ np.asarray(model.coef)
    out = candidates.assign(network_probability=candidates["probability"], probability=0.5 * (1 + np.tanh(0.5 * z)))
    if model.size_coef is not None and model.size_intercept is not None and model.size_range is not None:
        sizes = np.clip(np.exp(model.size_intercept + standard @ np.asarray(model.size_coef)), *model.size_range)
        out = out.assign(network_diameter_mm=out["diameter_mm"], diameter_mm=sizes)
    return out.sort_values("probability", ascending=False, kind="stable").reset_index(drop=True)
