"""Brain tumour phantom: BraTS 2021 layout, labels 1/2/4 inside the brain, regions nested,
tumour compartments with the contrast they have on real scans."""

from __future__ import annotations

import numpy as np
import pytest

from medsight.core.errors import ConfigError, InputError
from medsight.data import build_manifest
from medsight.data.adapters.brats2021 import brats_schema
from medsight.data.phantoms import make_phantom
from medsight.data.phantoms.base import case_rng
from medsight.data.phantoms.brain_tumor_seg import SHIPPED_COLIN, case_volumes, colin_in
from medsight.io import read


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


@pytest.mark.parametrize("voxel_mm", [1.0, 2.0])
def test_tumour_is_inside_the_brain_and_regions_nest(voxel_mm):
    images, labels, truth = case_volumes(case_rng(7, 0), voxel_mm=voxel_mm)
    brain = images["t1"] > 0
    assert (labels[~brain] == 0).all()
    schema = brats_schema(4)
    wt, tc, et = (schema.region_mask(labels, r) for r in ("WT", "TC", "ET"))
    assert et.sum() > 0 and (et <= tc).all() and (tc <= wt).all() and tc.sum() < wt.sum()
    centre = np.round(truth["centre"]).astype(int)
    assert wt[tuple(centre)] or labels[tuple(centre)] in (1, 4)
    from scipy import ndimage

    assert ndimage.label(wt, structure=np.ones((3, 3, 3)))[1] == 1  # one lesion, no oedema islands


@pytest.mark.parametrize("voxel_mm", [1.0, 2.0])
def test_compartments_look_as_on_real_scans(voxel_mm):
    images, labels, _ = case_volumes(case_rng(7, 1), voxel_mm=voxel_mm)
    brain = images["t1"] > 0
    normal = brain & (labels == 0)

    def mean(name, mask):
        return images[name][mask].mean()

    et, ed = labels == 4, labels == 2
    assert mean("t1ce", et) > 1.3 * mean("t1ce", ed)  # enhancing rim lights up after contrast
    assert mean("flair", ed) > 1.3 * mean("flair", normal)  # oedema is bright on FLAIR
    assert mean("t2", ed) > mean("t2", normal)


def test_same_seed_same_case():
    a = case_volumes(case_rng(3, 2), voxel_mm=2.0)
    b = case_volumes(case_rng(3, 2), voxel_mm=2.0)
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[0]["flair"], b[0]["flair"])


def test_the_real_head_is_found_where_it_is_told_else_the_shipped_copy(tmp_path, monkeypatch):
    from medsight.data.phantoms.base import default_data_dir

    assert SHIPPED_COLIN.is_file() and (SHIPPED_COLIN.parent / "LICENSE.colin27").is_file()
    assert colin_in(tmp_path) == SHIPPED_COLIN  # an empty folder holds no head: medsight's own copy
    (tmp_path / "mricron").mkdir()
    (tmp_path / "mricron" / "ch2bet.nii.gz").write_bytes(SHIPPED_COLIN.read_bytes())
    assert colin_in(tmp_path) == tmp_path / "mricron" / "ch2bet.nii.gz"
    monkeypatch.setenv("MEDSIGHT_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path and colin_in(None) == tmp_path / "mricron" / "ch2bet.nii.gz"


def test_a_broken_head_in_the_data_folder_is_named(tmp_path):
    (tmp_path / "mricron").mkdir()
    (tmp_path / "mricron" / "ch2bet.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(InputError, match=r"cannot read the Colin27 head .*remove it to use the shipped copy"):
        make_phantom("brain-tumor-seg", tmp_path / "out", cases=1, data_dir=tmp_path)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_coarser_voxels_keep_the_brats_field_of_view(tmp_path):
    out = make_phantom("brain-tumor-seg", tmp_path / "b", cases=1, seed=2, options={"voxel_mm": 2})
    flair = read(next(out.glob("*/*_flair.nii.gz")))
    assert flair.spatial_shape == (78, 120, 120) and flair.geometry.spacing == pytest.approx((2.0, 2.0, 2.0))
    seg = read(next(out.glob("*/*_seg.nii.gz")))
    assert seg.geometry.isclose(flair.geometry) and (seg.array == 4).any()


@pytest.mark.parametrize(
    ("options", "message"),
    [({"voxel": 2}, "has no option 'voxel'; its options: voxel_mm \\(default 1.0\\)"),
     ({"voxel_mm": "abc"}, "voxel_mm must be a number"),
     ({"voxel_mm": 9}, "must lie in \\[0.5, 4\\] mm")],
)  # fmt: skip
def test_phantom_options_are_checked(tmp_path, options, message):
    with pytest.raises(ConfigError, match=message):
        make_phantom("brain-tumor-seg", tmp_path / "b", cases=1, options=options)
    assert not (tmp_path / "b").exists()
