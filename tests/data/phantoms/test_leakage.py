"""Every 2D phantom keeps global intensity statistics as uninformative as real images do
(:mod:`tests.data.phantoms.leakage`): a model must find the lesions to score well."""

from __future__ import annotations

import pytest

from medsight.data import build_manifest
from medsight.data.phantoms import make_phantom
from tests.data.phantoms.leakage import CEILING, global_statistics_auc


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Each phantom made once for the module, whatever asks for it."""
    cache: dict[tuple[str, int, int], tuple] = {}

    def make(recipe: str, cases: int, seed: int):
        if (recipe, cases, seed) not in cache:
            folder = tmp_path_factory.mktemp(recipe) / "p"
            manifest = build_manifest(make_phantom(recipe, folder, cases=cases, seed=seed))
            cache[recipe, cases, seed] = manifest, [manifest.resolve(p) for p in manifest.table["image"]]
        return cache[recipe, cases, seed]

    return make


@pytest.mark.slow
def test_referable_dr_is_not_predicted_by_global_statistics(made):
    manifest, paths = made("dr-grading", 300, 1)
    referable = (manifest.table["target"] >= 2).astype(int)
    assert global_statistics_auc(paths, referable) <= CEILING


@pytest.mark.slow
@pytest.mark.parametrize(
    "finding", ["atelectasis", "cardiomegaly", "effusion", "nodule", "pneumothorax", "consolidation"]
)
def test_cxr_findings_are_not_predicted_by_global_statistics(made, finding):
    manifest, paths = made("cxr-findings", 400, 0)
    column = manifest.table[f"target_{finding}"]
    known = column.notna().to_numpy()
    kept = [p for p, k in zip(paths, known, strict=True) if k]
    assert global_statistics_auc(kept, column[known].astype(int)) <= CEILING


@pytest.mark.slow
def test_malignant_views_are_not_predicted_by_global_statistics(made):
    manifest, paths = made("mammo-screening", 60, 0)
    assert global_statistics_auc(paths, manifest.table["target"].astype(int)) <= CEILING
