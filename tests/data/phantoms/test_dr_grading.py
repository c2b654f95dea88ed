"""Fundus phantom: deterministic, read by the APTOS adapter, lesions consistent with the grade,
and no shortcut to the grade through brightness or file names."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from medsight.core import ConfigError
from medsight.data import build_manifest
from medsight.data.phantoms import make_phantom, phantoms
from medsight.data.phantoms.base import case_rng
from medsight.data.phantoms.dr_grading import fundus


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp("dr") / "aptos"
    make_phantom("dr-grading", out, cases=40, seed=3)
    return out


def test_written_in_aptos_layout_and_read_back(made):
    manifest = build_manifest(made)
    assert manifest.info["dataset"] == "aptos2019" == phantoms()["dr-grading"].layout
    truth = pd.read_csv(made / "phantom_truth.csv")
    assert manifest.table["target"].tolist() == truth["diagnosis"].tolist()
    assert set(manifest.table["target"]) >= {0, 2}
    img = Image.open(manifest.paths(0)["image"])
    assert img.size == (512, 512) and img.mode == "RGB"


def test_lesions_follow_the_grade(made):
    """ICDR: microaneurysms only (1); more, short of severe (2); the 4-2-1 rule (3); new vessels or
    pre-retinal blood (4). Drusen, a normal finding, may appear at any grade."""
    t = pd.read_csv(made / "phantom_truth.csv")
    dr = [c for c in t.columns if c not in ("id_code", "diagnosis", "right_eye", "drusen")]
    beyond_ma = [c for c in dr if c != "microaneurysms"]
    g = t["diagnosis"]
    assert (t.loc[g == 0, dr].sum(axis=1) == 0).all()
    assert (t.loc[g == 1, beyond_ma].sum(axis=1) == 0).all() and (t.loc[g == 1, "microaneurysms"] > 0).all()
    grade2 = t.loc[g == 2]
    assert (grade2[["haemorrhages", "flame_haemorrhages", "exudate_clusters", "cotton_wool"]].sum(axis=1) > 0).all()
    assert (grade2[["venous_beading", "irma", "neovascular", "preretinal"]].sum(axis=1) == 0).all()
    assert (grade2["haemorrhages"] <= 21).all() and (grade2["haemorrhages"] <= 2).any()  # borderline cases exist
    severe = t.loc[g == 3]
    assert ((severe["haemorrhages"] >= 14) | (severe["venous_beading"] >= 2) | (severe["irma"] >= 1)).all()
    assert ((t.loc[g == 4, "neovascular"] + t.loc[g == 4, "preretinal"]) > 0).all()
    assert (t.loc[g < 4, ["neovascular", "preretinal"]].sum(axis=1) == 0).all()
    assert (t["drusen"] > 0).any() and (t.loc[t["drusen"] > 0, "diagnosis"] == 0).any()


def test_same_seed_same_images(made, tmp_path):
    again = make_phantom("dr-grading", tmp_path / "again", cases=3, seed=3)
    first = pd.read_csv(made / "train.csv").head(3)
    assert pd.read_csv(again / "train.csv").equals(first)
    for id_code in first["id_code"]:
        a = np.asarray(Image.open(made / "train_images" / f"{id_code}.png"))
        b = np.asarray(Image.open(again / "train_images" / f"{id_code}.png"))
        assert np.array_equal(a, b)
    other = make_phantom("dr-grading", tmp_path / "other", cases=3, seed=4)
    assert not pd.read_csv(other / "train.csv")["id_code"].equals(first["id_code"])


def test_lesions_are_visible_in_the_pixels():
    """The same case drawn as grade 0 and grade 3 differs where lesions were drawn, not elsewhere."""
    healthy, _ = fundus(case_rng(0, 1), 0)
    severe, _ = fundus(case_rng(0, 1), 3)
    diff = np.abs(healthy.astype(int) - severe.astype(int)).sum(axis=-1)
    assert (diff > 60).mean() > 0.005  # haemorrhages and spots cover part of the image


def test_brightness_and_names_do_not_give_the_grade_away(made):
    t = pd.read_csv(made / "train.csv")
    referable = (t["diagnosis"] >= 2).astype(int)
    means = [np.asarray(Image.open(made / "train_images" / f"{i}.png"), np.float32).mean() for i in t["id_code"]]
    auc = roc_auc_score(referable, means)
    assert 0.25 < auc < 0.75, auc  # global brightness alone is a poor predictor
    ranks = t["id_code"].rank()
    assert abs(np.corrcoef(ranks, t["diagnosis"])[0, 1]) < 0.5  # names are random


def test_unknown_recipe_and_bad_counts(tmp_path):
    with pytest.raises(ConfigError, match="Did you mean 'dr-grading'"):
        make_phantom("dr-grade", tmp_path / "x")
    with pytest.raises(ConfigError, match="at least 1"):
        make_phantom("dr-grading", tmp_path / "x", cases=0)
    assert not (tmp_path / "x").exists()


def test_blending_on_the_mask_box_equals_blending_the_whole_photo():
    """_blend computes only the rows and columns its mask touches: the same pixels as the whole photo."""
    from medsight.data.phantoms.dr_grading import SIZE, _blend

    rng = np.random.default_rng(5)
    photo = rng.random((SIZE, SIZE, 3), dtype=np.float32)
    blob = np.zeros((SIZE, SIZE), np.float32)
    blob[40:90, 300:301] = rng.random((50, 1), dtype=np.float32)
    blob[88, 420] = 0.7
    for mask in (blob, np.zeros((SIZE, SIZE), np.float32), rng.random((SIZE, SIZE), dtype=np.float32)):
        mine = photo.copy()
        _blend(mine, mask, (0.4, 0.05, 0.03), 0.9)
        a = np.clip(mask * 0.9, 0.0, 1.0)[..., None]  # the blend over every pixel
        expected = photo * (1.0 - a) + a * np.asarray((0.4, 0.05, 0.03), np.float32)
        np.testing.assert_array_equal(mine, expected)
