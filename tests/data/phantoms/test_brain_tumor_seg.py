"""Brain tumour phantom: BraTS 2021 layout, labels 1/2/4 inside the brain, regions nested,
tumour compartments with the contrast they have on real scans."""

from __future__ import annotations

import numpy as np
import pytest

from medsight.data import build_manifest
from medsight.data.adapters.brats2021 import brats_schema
from medsight.data.phantoms import make_phantom
from medsight.data.phantoms.base import case_rng
from medsight.data.phantoms.brain_tumor_seg import case_volumes, colin_in
from medsight.io import read

pytestmark = pytest.mark.skipif(
    colin_in(None) is None,
    reason="needs the real Colin27 head from ../shared/data/mricron (absent in this clone)",
)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp("brain") / "brats"
    make_phantom("brain-tumor-seg", out, cases=2, seed=4)
    return out


@pytest.mark.slow
def test_brats_layout_read_back(made):
    m = build_manifest(made)
    assert m.info["dataset"] == "brats2021" and len(m) == 2
    paths = m.paths(0)
    volumes = {k: read(p) for k, p in paths.items()}
    shapes = {v.spatial_shape for v in volumes.values()}
    assert shapes == {(155, 240, 240)}
    geometries = [v.geometry for v in volumes.values()]
    assert all(g.isclose(geometries[0]) for g in geometries)
    seg = volumes["label"].array[0]
    assert set(np.unique(seg)) <= {0, 1, 2, 4} and (seg == 4).any() and (seg == 2).any()


def test_tumour_is_inside_the_brain_and_regions_nest():
    images, labels, truth = case_volumes(case_rng(7, 0))
    brain = images["t1"] > 0
    assert (labels[~brain] == 0).all()
    schema = brats_schema(4)
    wt, tc, et = (schema.region_mask(labels, r) for r in ("WT", "TC", "ET"))
    assert et.sum() > 0 and (et <= tc).all() and (tc <= wt).all() and tc.sum() < wt.sum()
    centre = np.round(truth["centre"]).astype(int)
    assert wt[tuple(centre)] or labels[tuple(centre)] in (1, 4)


def test_compartments_look_as_on_real_scans():
    images, labels, _ = case_volumes(case_rng(7, 1))
    brain = images["t1"] > 0
    normal = brain & (labels == 0)

    def mean(name, mask):
        return images[name][mask].mean()

    et, ed = labels == 4, labels == 2
    assert mean("t1ce", et) > 1.3 * mean("t1ce", ed)  # enhancing rim lights up after contrast
    assert mean("flair", ed) > 1.3 * mean("flair", normal)  # oedema is bright on FLAIR
    assert mean("t2", ed) > mean("t2", normal)


def test_same_seed_same_case():
    a = case_volumes(case_rng(3, 2))
    b = case_volumes(case_rng(3, 2))
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[0]["flair"], b[0]["flair"])


def test_the_real_head_is_found_where_it_is_told(tmp_path, monkeypatch):
    from medsight.data.phantoms.base import default_data_dir

    assert colin_in(tmp_path) is None  # an empty folder holds no head
    real = colin_in(None)
    assert real is not None and colin_in(real.parents[1]) == real
    monkeypatch.setenv("MEDSIGHT_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path and colin_in(None) is None
