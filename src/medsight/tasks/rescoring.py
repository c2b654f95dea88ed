"""A 3D detector's second stage: its candidates rescored by what the image looks like around them.

The detector's false positives on chest CT sit on vessels (tubes, bright in one cross-section),
its findings are blobs. LUNA16's false-positive-reduction track scores each candidate again from
the image around it; here that is a logistic model of a few numbers per candidate, in NumPy and
SciPy alone (so the torch-free runtime rescores too):

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
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from scipy import ndimage

from medsight.core.errors import InputError
from medsight.core.geometry import Geometry
from medsight.planning import CandidateRescoring

__all__ = ["FEATURES", "SCALES", "candidate_features", "fit_rescoring", "rescore"]

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


def fit_rescoring(features: np.ndarray, on_finding: np.ndarray) -> CandidateRescoring | None:
    """The logistic model of ``on_finding`` (bool per candidate) from ``features``
    (:func:`candidate_features`), standardised, L2-regularised (scikit-learn's default strength);
    None when fewer than 5 candidates lie on a finding or off one (too few to fit on)."""
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
    model = LogisticRegression(max_iter=5000).fit((features - mean) / scale, on_finding)
    return CandidateRescoring(features=list(FEATURES), mean=mean.tolist(), scale=scale.tolist(),
                              coef=model.coef_[0].tolist(), intercept=float(model.intercept_[0]),
                              candidates=len(on_finding), findings=hits)  # fmt: skip


def rescore(candidates: pd.DataFrame, image: np.ndarray, geometry: Geometry, model: CandidateRescoring) -> pd.DataFrame:
    """``candidates`` with ``probability`` from ``model`` (the network's kept as
    ``network_probability``), the most probable first.

    Raises:
        InputError: the model was fitted on other features than this version computes.
    """
    if tuple(model.features) != FEATURES:
        raise InputError(f"the plan's candidate rescoring reads features {model.features}; this version computes "
                         f"{list(FEATURES)}: train the detector again")  # fmt: skip
    if not len(candidates):
        return candidates.assign(network_probability=candidates["probability"])
    features = candidate_features(image, geometry, candidates)
    z = model.intercept + ((features - np.asarray(model.mean)) / np.asarray(model.scale)) @ np.asarray(model.coef)
    out = candidates.assign(network_probability=candidates["probability"], probability=0.5 * (1 + np.tanh(0.5 * z)))
    return out.sort_values("probability", ascending=False, kind="stable").reset_index(drop=True)
