"""Detection: findings drawn in world mm on any grid, candidates from probability maps, and the
round trip through LUNA16 scoring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from medsight.core.errors import InputError
from medsight.core.geometry import Geometry
from medsight.metrics.detection import cpm, match_nodules
from medsight.tasks.detection import DetectionTask, _findings, draw_balls, find_candidates

OBLIQUE = Geometry(spacing=(2.5, 0.8, 0.7), origin=(-30.0, 12.0, 250.0),
                   direction=((0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (1.0, 0.0, 0.0)))  # fmt: skip


def _brute_ball(geometry, shape, centre, diameter):
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    return np.linalg.norm(geometry.index_to_world(grid) - centre, axis=-1) < diameter / 2


@pytest.mark.parametrize("geometry", [Geometry(spacing=(1.0, 1.0, 1.0)), OBLIQUE])
def test_balls_are_drawn_in_world_millimetres_on_any_grid(geometry):
    shape = (20, 40, 36)
    centre = geometry.index_to_world([9.3, 17.6, 20.2])
    drawn = draw_balls(geometry, shape, centre[None], np.array([9.0]))
    np.testing.assert_array_equal(drawn > 0, _brute_ball(geometry, shape, centre, 9.0))
    tiny = draw_balls(geometry, shape, centre[None], np.array([0.2]), value=3)
    assert tiny.sum() == 3 and tiny[9, 18, 20] == 3  # smaller than a voxel: the nearest voxel
    off = draw_balls(geometry, shape, geometry.index_to_world([-50, 0, 0])[None], np.array([10.0]))
    assert not off.any()


def test_candidates_have_world_centres_ball_diameters_and_peak_probabilities():
    geometry = OBLIQUE
    shape = (24, 64, 64)
    centres = geometry.index_to_world(np.array([[8.0, 20.0, 20.0], [16.0, 44.0, 40.0]]))
    diameters = np.array([10.0, 16.0])
    truth = np.zeros(shape, np.float32)
    for centre, diameter, peak in zip(centres, diameters, (0.9, 0.7), strict=True):
        truth = np.maximum(truth, peak * draw_balls(geometry, shape, centre[None], diameter[None]))
    probability = truth.copy()
    probability[2, 60, 3] = 0.3  # a speck above the threshold: a weak candidate
    probability[3, 5, 60] = 0.05  # below it: nothing
    found = find_candidates(probability, geometry, threshold=0.1)
    assert len(found) == 3
    np.testing.assert_allclose(found["probability"], [0.9, 0.7, 0.3], atol=1e-6)
    np.testing.assert_allclose(found[["coordX", "coordY", "coordZ"]].to_numpy()[:2], centres, atol=0.8)
    np.testing.assert_allclose(found["diameter_mm"].to_numpy()[:2], diameters, rtol=0.1)
    assert len(find_candidates(probability, geometry, threshold=0.1, max_candidates=1)) == 1
    assert find_candidates(np.zeros(shape, np.float32), geometry).empty


def test_a_weaker_candidate_inside_a_stronger_ones_ball_is_suppressed():
    geometry = Geometry(spacing=(1.0, 1.0, 1.0))
    probability = np.zeros((30, 30, 30), np.float32)
    probability[8:22, 8:22, 8:22] = 0.9  # a 14 mm cube centred at 14.5: a ball of 17.4 mm
    probability[15, 15, 23] = 0.4  # a separate speck 8.5 mm from its centre: inside its radius
    probability[15, 15, 28] = 0.35  # 13.5 mm away: outside
    found = find_candidates(probability, geometry, threshold=0.1)
    assert found["probability"].round(2).tolist() == [0.9, 0.35]


def test_touching_findings_and_a_faint_background_stay_apart():
    """Two touching nodules are two candidates, each at its own centre, and a threshold below a
    scan's faint background still finds each nodule where it is (regions above the threshold would
    merge them all into one candidate, centred nowhere)."""
    geometry = OBLIQUE
    shape = (30, 90, 90)
    centres = geometry.index_to_world(np.array([[15.0, 40.0, 30.0], [15.0, 40.0, 47.0], [8.0, 70.0, 70.0]]))
    diameters = np.array([12.0, 9.0, 4.0])
    probability = np.full(shape, 0.04, np.float32)  # the faint response of a whole scan
    for centre, diameter, peak in zip(centres, diameters, (0.9, 0.6, 0.3), strict=True):
        ball = ndimage.gaussian_filter(draw_balls(geometry, shape, centre[None], diameter[None]).astype(np.float32), 1)
        probability = np.maximum(probability, peak * ball / ball.max())
    above = probability >= 0.02
    assert ndimage.label(above)[1] == 1  # one region holds everything
    found = find_candidates(probability, geometry, threshold=0.02)
    assert len(found) == 3
    np.testing.assert_allclose(found["probability"], [0.9, 0.6, 0.3], atol=1e-3)
    where = found[["coordX", "coordY", "coordZ"]].to_numpy()
    np.testing.assert_allclose(where, centres, atol=1.0)
    assert np.all(np.linalg.norm(where - centres, axis=1) < diameters / 2)  # each a LUNA16 hit
    np.testing.assert_allclose(found["diameter_mm"], diameters, rtol=0.35)


def test_a_plateau_is_one_candidate_at_its_centre():
    geometry = Geometry(spacing=(2.5, 0.7, 0.7))
    probability = np.zeros((12, 60, 60), np.float32)
    probability[4:8, 20:40, 10:30] = 0.8  # flat top: every voxel is a maximum of its neighbourhood
    found = find_candidates(probability, geometry, threshold=0.1)
    assert len(found) == 1
    np.testing.assert_allclose(found[["coordX", "coordY", "coordZ"]].to_numpy()[0], geometry.index_to_world(
        [5.5, 29.5, 19.5]), atol=1e-6)  # fmt: skip


def test_drawn_findings_found_again_score_a_perfect_froc():
    geometry = OBLIQUE
    shape = (30, 80, 80)
    rng = np.random.default_rng(0)
    rows, candidates = [], []
    for scan in range(4):
        centres = geometry.index_to_world(rng.uniform([5, 15, 15], [25, 65, 65], size=(2, 3)))
        diameters = rng.uniform(6, 14, size=2)
        balls = draw_balls(geometry, shape, centres, diameters).astype(np.float32)
        probability = ndimage.gaussian_filter(balls, 1.0)
        found = find_candidates(probability, geometry, threshold=0.1)
        rows += [[f"s{scan}", *c, d] for c, d in zip(centres, diameters, strict=True)]
        candidates += [[f"s{scan}", r.coordX, r.coordY, r.coordZ, r.probability] for r in found.itertuples()]
    annotations = pd.DataFrame(rows, columns=["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"])
    marks = pd.DataFrame(candidates, columns=["seriesuid", "coordX", "coordY", "coordZ", "probability"])
    entries = match_nodules(marks, annotations)
    assert entries.detected == 8 and entries.false_positives == 0
    assert cpm(entries.kind, entries.probability) == 1.0


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ({"label": "nodule", "x": 1, "y": 2, "w": 3, "h": 4}, "needs center"),
        ({"center": [1, 2], "diameter_mm": 5}, "has centre"),
        ({"center": [1, 2, 3], "diameter_mm": "big"}, "needs center"),
        ({"center": [1, 2, 3], "diameter_mm": 0}, "positive one"),
        ([1, 2, 3], "needs center"),
    ],
)
def test_findings_a_detector_cannot_use_are_named(box, message):
    with pytest.raises(InputError, match=message):
        _findings([box], "case7")
    _, diameters, excluded = _findings([{"center": [1, 2, 3], "diameter_mm": -1, "excluded": True}], "c")
    assert excluded.tolist() == [True] and diameters.tolist() == [-1.0]


def test_a_boxes_cell_that_is_not_a_list_of_findings_is_named():
    from medsight.data.manifest import parse_boxes as _boxes_of

    assert _boxes_of("", "c") == [] and _boxes_of(float("nan"), "c") == []
    with pytest.raises(InputError, match="case c9: its boxes cell is not JSON"):
        _boxes_of("{center: 1", "c9")
    with pytest.raises(InputError, match="holds dict, not a list"):
        _boxes_of('{"center": [1, 2, 3]}', "c9")


def test_a_manifest_without_findings_is_refused_with_the_reason(tmp_path):
    from medsight.data.manifest import Manifest

    manifest = Manifest(pd.DataFrame({"case_id": ["a"], "patient_id": ["a"], "image": ["a.nii.gz"], "split": [""]}),
                        tmp_path)  # fmt: skip
    task = DetectionTask.from_spec(DetectionTask.spec_type(kind="detection"))
    with pytest.raises(InputError, match="no boxes column"):
        task.prepare(manifest, task.preprocess_type(), tmp_path / "cache", progress=None)


def test_candidates_of_files_are_named_by_the_file():
    from medsight.tasks.detection import candidate_table

    table = pd.DataFrame({"input": ["/x/1.2.3.mhd", "/x/scan.nii.gz"],
                          "candidate_list": [json.dumps([{"coordX": 1, "coordY": 2, "coordZ": 3, "probability": 0.5,
                                                          "diameter_mm": 6}]), "[]"]})  # fmt: skip
    rows = candidate_table(table)
    assert rows["seriesuid"].tolist() == ["1.2.3"] and rows["probability"].tolist() == [0.5]
    with pytest.raises(InputError, match="not a detection model's"):
        candidate_table(pd.DataFrame({"input": ["a"]}))


def test_the_network_starts_at_one_percent_and_the_loss_favours_the_truth():
    import torch

    from medsight.models import ModelChoice
    from medsight.planning import case_facts, fingerprint, make_plan

    geometry = Geometry(spacing=(2.0, 2.0, 2.0))
    image = np.random.default_rng(0).normal(-800, 50, size=(1, 32, 48, 48)).astype(np.float32)
    balls = draw_balls(geometry, (32, 48, 48), geometry.index_to_world([[16, 24, 24]]), np.array([12.0]))
    from medsight.core.volume import Volume

    plan = make_plan(fingerprint([case_facts(Volume(image, geometry), Volume(balls[None], geometry))], modality="CT"),
                     out_channels=2, memory_gb=2, base_filters=4)  # fmt: skip
    task = DetectionTask.from_spec(DetectionTask.spec_type(kind="detection"))
    net = task.network(ModelChoice(name="dynunet"), 1, plan).eval()
    with torch.no_grad():
        out = net(torch.from_numpy(image[:, :32, :32, :32])[None])
    probability = torch.softmax(out, dim=1)[:, 1]
    assert 0.002 < float(probability.median()) < 0.05  # 1 % before the random weights' spread

    targets = torch.zeros(2, 8, 8, 8, dtype=torch.uint8)
    targets[0, 2:5, 2:5, 2:5] = 1
    right = torch.zeros(2, 2, 8, 8, 8)
    right[:, 1] = torch.where(targets > 0, 10.0, -10.0)
    wrong = right.flip(1)
    assert float(task.loss(right, targets)) < 0.1 < float(task.loss(wrong, targets))
    empty = torch.zeros(2, 8, 8, 8, dtype=torch.uint8)
    assert torch.isfinite(task.loss(right, empty))
    with pytest.raises(InputError, match="do not match"):
        task.loss(right, targets[:, :4])
    heads = torch.stack([right, wrong], dim=1)  # deep supervision: the full-resolution head weighs most
    assert float(task.loss(right, targets)) < float(task.loss(heads, targets)) < float(task.loss(wrong, targets))


def test_training_patches_hold_findings_off_centre():
    from medsight.data.patches import PatchDataset
    from medsight.data.volume_cache import CachedItem, VolumeCache

    item = CachedItem(row=0, case_id="a", label_column="label", spacing=(1.0, 1.0, 1.0), shape=(64, 64, 64),
                      source_shape=(64, 64, 64), box=((0, 64),) * 3,
                      locations={1: np.array([[32, 32, 32]])})  # fmt: skip
    cache = VolumeCache(Path(), (item,))
    np.random.seed(0)
    centred = PatchDataset(cache, [0], (16, 32, 32), 200, 1.0)
    assert all((centred._centre(0) == 32).all() for _ in range(20))
    moved = PatchDataset(cache, [0], (16, 32, 32), 200, 1.0, jitter=0.75)
    offsets = np.array([moved._centre(0) - 32 for _ in range(400)])
    assert np.all(np.abs(offsets) <= np.array([6, 12, 12]))  # within the central 3/4
    assert np.all(offsets.std(axis=0) > np.array([2, 4, 4]))  # and spread over it
    with pytest.raises(InputError, match="jitter"):
        PatchDataset(cache, [0], (16, 32, 32), 10, 1.0, jitter=2.0)


def test_official_folds_without_a_val_split_are_refused_before_any_scan_is_prepared(tmp_path, monkeypatch):
    import yaml

    from medsight.engine.fit import fit
    from medsight.engine.recipe import load_recipe
    from tests.tasks.test_conformance import _detection

    spec, manifest = _detection(tmp_path)
    table = pd.read_csv(manifest)
    table["split"], table["fold"] = "", np.arange(len(table)) % 10  # LUNA16: subsets, no split
    table.to_csv(manifest, index=False)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(spec))

    def prepared(*args, **kwargs):
        raise AssertionError("scans were prepared before the split was checked")

    monkeypatch.setattr(DetectionTask, "prepare", prepared)
    with pytest.raises(InputError, match=r"official folds.*--ignore-official"):
        fit(load_recipe(tmp_path / "recipe.yaml"), manifest, tmp_path / "run")


def test_every_finding_is_as_likely_in_a_training_patch_however_large(tmp_path):
    from medsight.data.patches import FindingPatches
    from medsight.data.volume_cache import CachedItem, VolumeCache

    label = np.zeros((32, 64, 64), np.uint8)
    label[4:20, 4:30, 4:30] = 1  # a large finding: 10,816 voxels
    label[26, 50, 50] = 1  # a one-voxel finding in the same scan
    other = np.zeros((32, 64, 64), np.uint8)
    other[10:12, 40:42, 10:12] = 1  # an 8-voxel finding in another scan
    items = []
    for n, array in enumerate((label, other, np.zeros_like(label))):
        np.save(tmp_path / f"label_{n}.npy", array)
        np.save(tmp_path / f"image_{n}.npy", array[None].astype(np.float32))
        where = {1: np.argwhere(array)[:2000]} if array.any() else {}
        items.append(CachedItem(row=n, case_id=str(n), label_column="label", spacing=(1.0, 1.0, 1.0),
                                shape=array.shape, source_shape=array.shape, box=((0, 32), (0, 64), (0, 64)),
                                locations=where))  # fmt: skip
    cache = VolumeCache(tmp_path, tuple(items))
    patches = FindingPatches(cache, [0, 1, 2], (8, 8, 8), 3000, 1.0, seed=0)
    assert sorted(len(v) for _, v in patches.findings) == [1, 8, 64]  # voxels kept per finding, at most 64
    np.random.seed(0)
    hits = np.zeros(3)
    for n in range(len(patches)):
        _, target = patches[n]
        centre = target[4, 4, 4]  # every patch is centred on a finding voxel here (no jitter)
        assert centre == 1
        assert int(ndimage.label(target.numpy())[0].max()) == 1  # one finding per patch here
        voxels = int(target.sum())
        hits[0 if voxels == 1 else 1 if voxels == 8 else 2] += 1
    assert np.all(np.abs(hits / len(patches) - 1 / 3) < 0.04)  # voxel by voxel the large one would be 99.9 %
    background = FindingPatches(cache, [2], (8, 8, 8), 50, 1.0)
    assert background.findings == []  # nothing to centre on: every patch lies anywhere
    assert all(int(background[n][1].sum()) == 0 for n in range(50))


def test_each_finding_weighs_the_same_in_the_loss_whatever_its_size():
    import torch

    from medsight.tasks.detection import finding_weights

    targets = torch.zeros(2, 8, 16, 16, dtype=torch.uint8)
    targets[0, 1:5, 1:9, 1:9] = 1  # 256 voxels
    targets[0, 7, 14, 14] = 1  # 1 voxel
    targets[1, 2:4, 2:4, 2:4] = 1  # 8 voxels
    weights = finding_weights(targets)
    positives = int((targets > 0).sum())
    assert float(weights.sum()) == pytest.approx(positives)  # the same total as unweighted voxels
    per_finding = [float(weights[0, 1:5, 1:9, 1:9].sum()), float(weights[0, 7, 14, 14]),
                   float(weights[1, 2:4, 2:4, 2:4].sum())]  # fmt: skip
    assert per_finding == pytest.approx([positives / 3] * 3)
    assert float(weights[targets == 0].abs().sum()) == 0
    assert float(finding_weights(torch.zeros(1, 4, 4, 4, dtype=torch.uint8)).sum()) == 0

    task = DetectionTask.from_spec(DetectionTask.spec_type(kind="detection"))
    logits = torch.zeros(2, 2, 8, 16, 16)
    logits[:, 1] = torch.where(targets > 0, 6.0, -6.0)
    missed_small = logits.clone()
    missed_small[0, 1, 7, 14, 14] = -6.0  # the one-voxel finding missed
    missed_large = logits.clone()
    missed_large[0, 1, 1:5, 1:9, 1] = -6.0  # 32 voxels of the large one's edge missed
    # missing a whole (small) finding costs more than missing an eighth of a large one
    assert float(task.loss(missed_small, targets)) > float(task.loss(missed_large, targets))


def test_many_peaks_give_the_most_probable_candidates():
    geometry = Geometry(spacing=(1.0, 1.0, 1.0))
    probability = np.zeros((10, 80, 80), np.float32)
    values = np.linspace(0.2, 0.9, 49)
    for n, value in enumerate(np.random.default_rng(1).permutation(values)):
        probability[5, 5 + 10 * (n // 7), 5 + 10 * (n % 7)] = value
    found = find_candidates(probability, geometry, threshold=0.1, max_candidates=3)  # 12 peaks searched of 49
    np.testing.assert_allclose(found["probability"], values[::-1][:3], atol=1e-6)
    assert len(find_candidates(probability, geometry, threshold=0.1)) == 49


def test_every_nodule_keeps_a_voxel_on_a_coarse_plan_grid(tmp_path):
    """A 3 mm nodule on a plan grid of 8 mm voxels: nearest-neighbour resampling alone would often
    lose it (then taught as background); the detector's plan keeps a voxel of every nodule."""
    from medsight.data.manifest import Manifest
    from medsight.tasks.segmentation import PlanRequest
    from tests.tasks.test_conformance import _detection

    _, path = _detection(tmp_path)
    manifest = Manifest.load(path)
    table = manifest.table.copy()
    table["boxes"] = [json.dumps([{**json.loads(b)[0], "diameter_mm": 3.0}]) for b in table["boxes"]]
    task = DetectionTask(DetectionTask.spec_type(kind="detection"))
    request = PlanRequest(memory_gb=2, base_filters=4, modality="CT", overrides={"spacing": [8.0, 8.0, 8.0]})
    data = task.prepare(manifest.with_table(table), request, tmp_path / "cache", progress=None)
    assert data.preprocess.keep_findings and data.preprocess.spacing == (8.0, 8.0, 8.0)
    cache = data.inputs
    assert all(int((cache.label(n) == 1).sum()) >= 1 for n in range(len(cache)))


def test_the_margin_around_a_finding_is_left_out_of_the_loss():
    """With ``margin`` 1 the background touching a finding costs nothing (a small nodule's visible
    blob is wider than its target), and the rest of the background costs as before."""
    import torch

    from medsight.tasks.detection import margin_mask

    targets = torch.zeros(1, 8, 12, 12, dtype=torch.long)
    targets[0, 4, 6, 6] = 1  # a one-voxel finding
    mask = margin_mask(targets, 1)
    assert int((~mask).sum()) == 26 and bool(mask[0, 4, 6, 6]) and bool(mask[0, 4, 6, 8])
    assert bool(margin_mask(targets, 0).all())

    def logits(blob: bool, far: bool) -> torch.Tensor:
        out = torch.zeros(1, 2, 8, 12, 12)
        out[:, 1] = -6.0
        out[0, 1, 4, 6, 6] = 6.0
        if blob:
            out[0, 1, 3:6, 5:8, 5:8] = 6.0  # the finding and its 26 neighbours
        if far:
            out[0, 1, 1, 1, 1] = 6.0  # a false positive away from it
        return out

    def loss(margin: int, out: torch.Tensor) -> float:
        return float(DetectionTask(DetectionTask.spec_type(kind="detection", margin=margin)).loss(out, targets))

    assert loss(1, logits(True, False)) == pytest.approx(loss(1, logits(False, False)), abs=1e-6)
    assert loss(0, logits(True, False)) > loss(0, logits(False, False)) + 0.1
    assert loss(1, logits(False, True)) > loss(1, logits(False, False)) + 0.1


def test_excluded_findings_are_drawn_as_ignored_regions_and_cost_nothing(tmp_path):
    """LUNA16's excluded findings (diameter unknown: its 10 mm) are neither nodule nor background
    in training, as in scoring: the network may say anything on them and the voxels touching them."""
    import torch

    from medsight.data.manifest import Manifest, parse_boxes
    from medsight.io import read
    from medsight.metrics.detection import EXCLUDED_DIAMETER_MM
    from medsight.tasks.detection import _IGNORED, _targets
    from medsight.transforms.volume3d import IGNORE_INDEX
    from tests.tasks.test_conformance import _detection

    _, path = _detection(tmp_path)
    manifest = _targets(Manifest.load(path), tmp_path / "targets", progress=None)
    row = manifest.table.iloc[0]  # a nodule and an excluded finding 12 mm off it on every axis
    drawn = read(row["label"])
    centres, diameters, excluded = _findings(parse_boxes(row["boxes"], "0"), "0")
    expected = draw_balls(drawn.geometry, drawn.spatial_shape, centres[excluded], np.array([EXCLUDED_DIAMETER_MM]))
    labels = np.asarray(drawn.array[0])
    nodule = draw_balls(drawn.geometry, drawn.spatial_shape, centres[~excluded], diameters[~excluded]) > 0
    np.testing.assert_array_equal(labels == 1, nodule)
    np.testing.assert_array_equal(labels == _IGNORED, (expected > 0) & ~nodule)
    assert set(np.unique(np.asarray(read(manifest.table.iloc[1]["label"]).array))) == {0, 1}  # none excluded

    targets = torch.zeros(1, 10, 16, 16, dtype=torch.uint8)
    targets[0, 2:4, 2:4, 2:4] = 1
    targets[0, 6:8, 10:12, 10:12] = IGNORE_INDEX
    task = DetectionTask(DetectionTask.spec_type(kind="detection"))
    logits = torch.zeros(1, 2, 10, 16, 16)
    logits[:, 1] = torch.where(targets == 1, 6.0, -6.0)
    base = float(task.loss(logits, targets))
    on = logits.clone()
    on[0, 1, 5:9, 9:13, 9:13] = 6.0  # the ignored region and the voxels touching it called a finding
    assert float(task.loss(on, targets)) == pytest.approx(base, abs=1e-6)
    off = logits.clone()
    off[0, 1, 6:8, 2:4, 10:12] = 6.0  # the same elsewhere is a false positive
    assert float(task.loss(off, targets)) > base + 0.1
    assert task.score(on, targets) == pytest.approx(task.score(logits, targets))


def test_ignored_regions_are_no_findings_to_centre_on_and_never_cover_one():
    from medsight.transforms.volume3d import IGNORE_INDEX, keep_lost_regions, resample

    source = np.zeros((9, 9, 9), np.uint8)
    source[4, 4, 4] = 1  # a one-voxel finding
    source[3:6, 3:6, 3:6][source[3:6, 3:6, 3:6] == 0] = IGNORE_INDEX  # an ignored shell around it
    coarse = resample(source[None], (3, 3, 3), labels=True)[0]
    kept = keep_lost_regions(source, coarse)
    assert (kept == 1).sum() == 1 and kept[1, 1, 1] == 1  # the finding keeps its voxel; ignore does not take it


def test_the_findings_a_report_places_are_the_candidates_the_overlay_draws():
    import json

    task = DetectionTask(DetectionTask.spec_type(kind="detection", overlay_probability=0.5))
    listed = [{"coordX": 1.0, "coordY": 2.0, "coordZ": 3.0, "diameter_mm": 5.0, "probability": p}
              for p in (0.4, 0.9, 0.5, 0.62)]  # fmt: skip
    found = task.findings({"candidate_list": json.dumps(listed)})
    assert [f.probability for f in found] == [0.9, 0.62, 0.5]  # at or above 0.5, most probable first
    assert found[0].name == "nodule" and found[0].centre_mm == (1.0, 2.0, 3.0) and found[0].diameter_mm == 5.0
    assert task.findings({"candidate_list": "[]"}) == [] and task.findings({"candidate_list": float("nan")}) == []
    assert task.findings({}) == []
