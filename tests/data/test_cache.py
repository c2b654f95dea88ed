"""Preprocessing cache: built once, reused while inputs are unchanged, rebuilt when they change."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medsight.core import InputError
from medsight.data import build_manifest
from medsight.data.cache import build_image_cache
from medsight.data.dataset import ImageDataset
from medsight.data.phantoms import make_phantom
from medsight.transforms.image2d import Augment2D, Preprocess2D, build_augmentation
from tests.data.replicas import REPLICAS


@pytest.fixture
def fundus(tmp_path):
    return build_manifest(make_phantom("dr-grading", tmp_path / "aptos", cases=6, seed=2))


def test_cache_is_built_once_and_reused(fundus, tmp_path):
    spec = Preprocess2D(size=64)
    seen = []
    cache = build_image_cache(fundus, spec, tmp_path / "cache", progress=lambda *a: seen.append(a))
    assert cache.images.shape == (6, 3, 64, 64) and seen[-1] == ("preprocessing images", 6, 6)
    assert list(cache.case_ids) == list(fundus.table["case_id"])
    assert len(cache.shapes) == 6 and all(h > 64 and w > 64 for h, w in cache.shapes)  # the sources' own sizes
    stamp = (tmp_path / "cache" / "images.npy").stat().st_mtime_ns
    again = build_image_cache(fundus, spec, tmp_path / "cache")
    assert (tmp_path / "cache" / "images.npy").stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again.images, cache.images)
    bigger = build_image_cache(fundus, Preprocess2D(size=32), tmp_path / "cache")
    assert bigger.images.shape == (6, 3, 32, 32)
    assert json.loads((tmp_path / "cache" / "index.json").read_text())["spec"]["size"] == 32


def test_a_changed_file_invalidates_the_cache(fundus, tmp_path):
    spec = Preprocess2D(size=32)
    cache = build_image_cache(fundus, spec, tmp_path / "cache")
    first = fundus.paths(0)["image"]
    from PIL import Image

    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(first)
    rebuilt = build_image_cache(fundus, spec, tmp_path / "cache")
    assert rebuilt.images[0].max() == 0 and cache.images is not rebuilt.images


def test_unreadable_image_names_the_case(fundus, tmp_path):
    fundus.paths(2)["image"].write_bytes(b"broken")
    case = fundus.table["case_id"].iloc[2]
    with pytest.raises(InputError, match=f"case {case}: cannot prepare.*medsight data qc"):
        build_image_cache(fundus, Preprocess2D(size=32), tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_medmnist_arrays_and_dicom_mammograms_are_cached(tmp_path):
    (tmp_path / "m").mkdir()
    root, _ = REPLICAS["medmnist"](tmp_path / "m", False)
    cache = build_image_cache(build_manifest(root), Preprocess2D(size=28, channels=1), tmp_path / "c1")
    assert cache.images.shape == (11, 1, 28, 28)
    mammo = build_manifest(make_phantom("mammo-screening", tmp_path / "mg", cases=1, seed=1))
    cache = build_image_cache(mammo, Preprocess2D(size=64, channels=1), tmp_path / "c2")
    assert cache.images.shape == (4, 1, 64, 64) and cache.images.max() > 200


def test_dataset_items(fundus, tmp_path):
    cache = build_image_cache(fundus, Preprocess2D(size=32), tmp_path / "cache")
    targets = fundus.table["target"].to_numpy()
    plain = ImageDataset(cache, targets, indices=np.array([1, 3]))
    x, y = plain[0]
    assert len(plain) == 2 and x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and y.item() == targets[1]
    torch.testing.assert_close(x, torch.from_numpy(cache.images[1] / 255.0).float())
    augmented = ImageDataset(cache, targets, augment=build_augmentation(Augment2D(), seed=0))
    assert augmented[0][0].shape == (3, 32, 32)
    multi = ImageDataset(cache, np.stack([targets, targets * np.nan], axis=1))
    assert multi[0][1].shape == (2,) and torch.isnan(multi[0][1][1])
    with pytest.raises(InputError, match="targets for"):
        ImageDataset(cache, targets[:-1])


def test_runs_with_different_preprocessing_keep_their_own_caches(fundus, tmp_path):
    from medsight.data.cache import default_cache_dir

    small, large = Preprocess2D(size=32), Preprocess2D(size=48)
    folders = {spec.size: default_cache_dir(fundus, "dr-grading", spec) for spec in (small, large)}
    assert folders[32] != folders[48] and folders[32].parent == folders[48].parent
    assert folders[32].parent == fundus.root / ".medsight-cache" / "dr-grading"
    assert default_cache_dir(fundus, "dr-grading") not in folders.values()  # no spec: one folder for the cases
    assert default_cache_dir(fundus, "dr-grading", Preprocess2D(size=32)) == folders[32]  # stable per spec
    build_image_cache(fundus, small, folders[32])
    stamp = (folders[32] / "images.npy").stat().st_mtime_ns
    build_image_cache(fundus, large, folders[48])
    build_image_cache(fundus, small, folders[32])  # the 48 px run did not replace it
    assert (folders[32] / "images.npy").stat().st_mtime_ns == stamp


def test_two_manifests_of_one_folder_keep_their_own_caches(fundus):
    """Two manifests beside each other (e.g. a cohort and a subset of it) get separate default caches,
    so runs on them at once never open each other's."""
    from medsight.data.cache import default_cache_dir

    spec = Preprocess2D(size=32)
    subset = fundus.with_table(fundus.table.iloc[:3].reset_index(drop=True))
    assert default_cache_dir(subset, "dr-grading", spec) != default_cache_dir(fundus, "dr-grading", spec)
    assert default_cache_dir(subset, "dr-grading", spec).parent == default_cache_dir(fundus, "dr-grading", spec).parent


def test_a_cache_replaced_while_it_was_built_is_not_taken(fundus, tmp_path):
    """Another process building a cache of other cases into the same folder at the same moment: what
    is left there is not this build's, and is refused with the fix instead of used."""
    from medsight.data.cache import _open, built

    spec = Preprocess2D(size=32)
    build_image_cache(fundus, spec, tmp_path / "cache")
    mine = json.loads((tmp_path / "cache" / "index.json").read_text())["key"]
    assert list(built(tmp_path / "cache", mine, _open).case_ids) == list(fundus.table["case_id"])
    subset = fundus.with_table(fundus.table.iloc[:3].reset_index(drop=True))
    build_image_cache(subset, spec, tmp_path / "cache")  # the other process's rename lands first
    with pytest.raises(InputError, match="another process replaced the preprocessed cache"):
        built(tmp_path / "cache", mine, _open)
    (tmp_path / "cache" / "index.json").unlink()
    with pytest.raises(InputError, match="vanished or broke"):
        built(tmp_path / "cache", mine, _open)
