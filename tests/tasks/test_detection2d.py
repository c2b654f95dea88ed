"""2D detection: boxes onto prepared images and back, target maps, patches, the cell loss, detections
from cell maps, and their scoring against an independent computation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medsight.core.errors import ConfigError, InputError
from medsight.core.geometry import Geometry
from medsight.core.volume import Volume
from medsight.data.manifest import Manifest
from medsight.engine.recipe import load_recipe
from medsight.metrics.detection import average_precision_boxes, froc_curve, match_boxes, sensitivity_at
from medsight.tasks import Prediction, task_for
from medsight.tasks.detection2d import (
    FINDING,
    OTHER,
    UNKNOWN,
    UNLABELLED,
    BoxPatches,
    Detection2DTask,
    _cell_targets,
    cell_boxes,
    draw_boxes,
)
from medsight.transforms.image2d import Preprocess2D, boxes_from_prepared, boxes_to_prepared, prepare_image

SPEC = {"kind": "detection2d", "min_birads": 4, "patch": 16, "patches_per_epoch": 32}


def _task(**changes) -> Detection2DTask:
    return task_for({**SPEC, **changes})


@pytest.mark.parametrize("shape", [(48, 40), (30, 64), (50, 50)])
def test_boxes_land_where_prepare_image_puts_their_pixels(shape):
    """A bright rectangle in a source image of any aspect lies inside its box mapped onto the prepared image."""
    h, w = shape
    pixels = np.zeros(shape, np.uint8)
    box = np.array([[w * 0.3, h * 0.2, w * 0.6, h * 0.7]])
    x0, y0, x1, y1 = np.rint(box[0]).astype(int)
    pixels[y0:y1, x0:x1] = 255
    prepared = prepare_image(Volume(pixels[None, None], Geometry()), Preprocess2D(size=64, channels=1))[0]
    mapped = boxes_to_prepared(np.array([[x0, y0, x1, y1]]), shape, 64)[0]
    ys, xs = np.nonzero(prepared > 127)
    assert xs.min() >= mapped[0] - 1 and xs.max() + 1 <= mapped[2] + 1
    assert ys.min() >= mapped[1] - 1 and ys.max() + 1 <= mapped[3] + 1
    np.testing.assert_allclose(boxes_from_prepared(mapped, shape, 64)[0], [x0, y0, x1, y1], atol=1e-9)
    assert (boxes_from_prepared(np.array([[-10, -10, 999, 999]]), shape, 64)[0] == [0, 0, w, h]).all()  # clipped
    with pytest.raises(InputError, match="has no area"):
        boxes_to_prepared(box, (0, 10), 64)


def test_maps_paint_findings_over_other_boxes_and_keep_thin_boxes():
    boxes = np.array([[2, 2, 10, 10, FINDING], [0, 0, 6, 6, OTHER], [20.2, 20.2, 20.4, 20.3, FINDING],
                      [30, 30, 40, 40, OTHER]])  # fmt: skip
    drawn = draw_boxes(boxes, 32)
    assert drawn[3, 3] == FINDING and drawn[1, 1] == OTHER and drawn[9, 9] == FINDING and drawn[10, 10] == 0
    assert drawn[20, 20] == FINDING and drawn[30:, 30:].min() == OTHER  # a sliver marks its pixel; clipped at the edge
    assert draw_boxes(np.zeros((0, 5)), 8).sum() == 0


def test_cell_targets_and_labels_follow_the_maps():
    maps = torch.zeros(4, 2, 24, 20, dtype=torch.uint8)
    maps[0, 0, 9:11, 17:20] = FINDING  # cell row 1, column 2 of finding 0
    maps[1, :, 0:4, 0:4] = OTHER
    maps[2, 0] = UNKNOWN
    maps[3, 1] = UNLABELLED
    finding, known, label, labelled = _cell_targets(maps, (3, 3))
    assert finding.shape == known.shape == (4, 2, 3, 3) and label.shape == labelled.shape == (4, 2)
    assert finding[0, 0].nonzero().tolist() == [[1, 2]] and finding.sum() == 1
    assert known[:2].min() == 1 and known[2, 0].max() == 0 and known[2, 1].min() == 1 and known[3, 1].max() == 0
    assert label.tolist() == [[1, 0], [0, 0], [1, 0], [0, 0]]
    assert labelled.tolist() == [[1, 1], [1, 1], [1, 1], [1, 0]]
    with pytest.raises(InputError, match="cannot cover"):
        _cell_targets(maps, (2, 2))


def test_the_loss_rewards_the_right_cells_and_is_finite_without_findings():
    task = _task()
    maps = torch.zeros(2, 16, 16, dtype=torch.uint8)
    maps[0, 0:8, 8:16] = FINDING
    right = torch.full((2, 1, 2, 2), -6.0)
    right[0, 0, 0, 1] = 6.0
    wrong = -right
    assert task.loss(right, maps) < 0.05 < task.loss(wrong, maps)
    empty = task.loss(torch.full((2, 1, 2, 2), -6.0), torch.zeros(2, 16, 16, dtype=torch.uint8))
    assert torch.isfinite(empty) and empty < 0.01
    unknown = torch.full((1, 16, 16), UNKNOWN, dtype=torch.uint8)  # only the image term: its most probable cell
    assert task.loss(torch.tensor([[[[6.0, -6.0], [-6.0, -6.0]]]]), unknown) < 0.01
    assert task.loss(torch.full((1, 1, 2, 2), -6.0), unknown) > 5
    with pytest.raises(InputError, match="cell logits"):
        task.loss(torch.zeros(2, 1), maps)


def test_detections_are_groups_of_cells_boxed_at_half_their_peak():
    p = np.zeros((8, 10))
    p[1:4, 1:4] = 0.15  # one group: faint shoulders around a clear peak
    p[2, 2] = 0.9
    p[6, 7:9] = [0.3, 0.25]  # a second, fainter group
    p[0, 9] = 0.05  # below the threshold
    marks = cell_boxes(p, threshold=0.1, max_detections=10)
    np.testing.assert_allclose(marks, [[16, 16, 24, 24, 0.9], [56, 48, 72, 56, 0.3]])
    assert len(cell_boxes(p, threshold=0.1, max_detections=1)) == 1
    assert cell_boxes(np.zeros((4, 4)), threshold=0.1, max_detections=5).shape == (0, 5)


def test_findings_that_a_faint_ridge_joins_stay_apart_and_a_lesion_with_two_bumps_is_one():
    p = np.zeros((6, 12))
    p[2, 0:12] = 0.15  # a faint ridge across the image (the mediastinum between two effusions)
    p[1:4, 1:3] = 0.8
    p[1:4, 9:11] = [[0.6, 0.5], [0.7, 0.6], [0.6, 0.5]]
    marks = cell_boxes(p, threshold=0.1, max_detections=10)
    np.testing.assert_allclose(marks, [[8, 8, 24, 32, 0.8], [72, 8, 88, 32, 0.7]])
    bumps = np.zeros((5, 12))
    bumps[1:4, 1:11] = 0.5  # one lesion, brighter at both ends: the pass between them is high
    bumps[2, 2], bumps[2, 9] = 0.9, 0.8
    np.testing.assert_allclose(cell_boxes(bumps, threshold=0.1, max_detections=10), [[8, 8, 88, 32, 0.9]])
    plateau = np.zeros((4, 4))
    plateau[1:3, 1:3] = 0.4  # a flat top is one peak
    np.testing.assert_allclose(cell_boxes(plateau, threshold=0.1, max_detections=10), [[8, 8, 24, 24, 0.4]])


def _manifest(root: Path, rows: list[dict]) -> Manifest:
    for row in rows:
        Image.fromarray(np.full((40, 32), 50, np.uint8)).save(root / row["image"])
    table = pd.DataFrame(rows)
    table.to_csv(root / "m.csv", index=False)
    return Manifest.load(root / "m.csv")


def _row(i: int, target: int, boxes: list[dict] | None, split: str = "train") -> dict:
    return {"case_id": f"c{i}", "patient_id": f"p{i}", "image": f"i{i}.png", "target": target, "split": split,
            "boxes": json.dumps(boxes) if boxes is not None else ""}  # fmt: skip


def _box(birads: int | None, label: str = "['Mass']", x: float = 4) -> dict:
    return {"label": label, "birads": birads, "x": x, "y": 8, "w": 8, "h": 8}


def test_prepare_tells_findings_from_other_boxes_and_unknown_images(tmp_path):
    manifest = _manifest(tmp_path, [
        _row(0, 1, [_box(5), _box(2, x=20)]),  # a finding and a benign box
        _row(1, 0, [_box(5)]),  # a suspicious box on a negative image counts as another box
        _row(2, 1, [_box(3)]),  # positive, but no box passes the filter: findings unknown
        _row(3, 1, None),  # positive without boxes
        _row(4, 0, None),
    ])  # fmt: skip
    data = _task().prepare(manifest, Preprocess2D(size=32, channels=1), tmp_path / "cache", progress=None)
    findings = [b[:, 4].tolist() for b in data.inputs.boxes]  # finding 0, or -1: another box
    assert findings == [[0, -1], [-1], [-1], [], []]
    assert data.inputs.unknown[:, 0].tolist() == [False, False, True, True, False]
    assert data.inputs.map(0)[0, 7, 7] == FINDING and data.inputs.map(0)[0, 10, 22] == OTHER
    # 40x32 padded to 40x40 (4 columns left), then 32/40: the box x 4..12, y 8..16 -> 6.4..12.8, 6.4..12.8
    np.testing.assert_allclose(data.inputs.boxes[0][0, :4], [6.4, 6.4, 12.8, 12.8])
    assert (data.inputs.map(3) == UNKNOWN).all() and data.inputs.map(4).max() == 0
    assert data.targets.tolist() == [1, 0, 1, 1, 0]
    by_label = _task(min_birads=None, box_labels=["calc"]).prepare(
        manifest, Preprocess2D(size=32, channels=1), tmp_path / "cache", progress=None
    )
    assert by_label.inputs.unknown[:4, 0].tolist() == [True, False, True, True]  # no calcification boxes at all


@pytest.mark.parametrize(
    ("cell", "message"),
    [("not json", "boxes cell is not JSON"), ('[{"x": 1, "y": 2}]', "a 2D box needs x, y, w, h"),
     ('[{"center": [1, 2, 3], "diameter_mm": 4}]', "3D findings"),
     ('[{"x": 1, "y": 2, "w": -3, "h": 4}]', "w and h must be >= 0")],
)  # fmt: skip
def test_bad_boxes_are_named_with_their_case(tmp_path, cell, message):
    manifest = _manifest(tmp_path, [_row(0, 1, None)])
    manifest = manifest.with_table(manifest.table.assign(boxes=[cell]))
    with pytest.raises(InputError, match=f"case c0: .*{message}"):
        _task().prepare(manifest, Preprocess2D(size=32, channels=1), tmp_path / "cache", progress=None)


def test_a_manifest_without_boxes_or_training_findings_is_refused(tmp_path):
    manifest = _manifest(tmp_path, [_row(0, 1, None), _row(1, 0, None), _row(2, 1, None, "val"),
                                    _row(3, 0, None, "val")])  # fmt: skip
    task, spec = _task(), Preprocess2D(size=32, channels=1)
    data = task.prepare(manifest, spec, tmp_path / "cache", progress=None)
    with pytest.raises(InputError, match="no training image has a finding box"):
        task.check(data, {"train": np.array([0, 1]), "val": np.array([2, 3])})
    with pytest.raises(InputError, match="no boxes column"):
        task.prepare(manifest.with_table(manifest.table.drop(columns="boxes")), spec, tmp_path / "c2", progress=None)


def test_patches_come_at_their_rates_and_skip_unknown_images(tmp_path):
    manifest = _manifest(tmp_path, [_row(0, 1, [_box(5)]), _row(1, 0, [_box(2, x=16)]), _row(2, 1, None),
                                    _row(3, 0, None)])  # fmt: skip
    data = _task().prepare(manifest, Preprocess2D(size=32, channels=1), tmp_path / "cache", progress=None)
    np.random.seed(0)
    always = BoxPatches(data.inputs, [0, 1, 2, 3], patch=16, samples=50, finding_rate=1.0, other_rate=0.0)
    assert all((always[k][1] == FINDING).any() for k in range(50))  # the finding is always in the patch
    others = BoxPatches(data.inputs, [0, 1, 2, 3], patch=16, samples=50, finding_rate=0.0, other_rate=1.0)
    assert all((others[k][1] == OTHER).any() for k in range(50))
    anywhere = BoxPatches(data.inputs, [0, 1, 2, 3], patch=16, samples=400, finding_rate=0.0, other_rate=0.0)
    assert 2 not in anywhere.items and not any((anywhere[k][1] == UNKNOWN).any() for k in range(400))
    image, label = anywhere[0]
    assert image.shape == (1, 16, 16) and image.dtype == torch.float32 and label.shape == (1, 16, 16)
    with pytest.raises(InputError, match="no training image has a known target map"):
        BoxPatches(data.inputs, [2], patch=16, samples=4, finding_rate=0.5, other_rate=0.0)


def test_spec_settings_are_checked():
    with pytest.raises(ConfigError, match="multiple of 8"):
        load_recipe("mammo-screening", ["task.patch=60"])
    with pytest.raises(ConfigError, match="must not exceed 1"):
        load_recipe("mammo-screening", ["task.finding_rate=0.8", "task.other_rate=0.4"])
    with pytest.raises(ConfigError, match="two classes"):
        load_recipe("mammo-screening", ["task.classes=[a, b, c]"])
    with pytest.raises(ConfigError, match="ResNet backbone"):
        _task().network(load_recipe("mammo-screening", ["model.name=densenet121"]).model, 1)


def test_the_network_scores_cells_of_any_image_and_takes_a_classifiers_weights(tmp_path):
    from medsight.models.registry import build_model, registered_models
    from medsight.models.transfer import backbone_parameters, load_pretrained

    recipe = load_recipe("mammo-screening", ["model.name=resnet10"])
    net = _task().network(recipe.model, 1).eval()
    with torch.no_grad():
        assert net(torch.rand(2, 1, 64, 48)).shape == (2, 1, 8, 6)
        assert net(torch.rand(1, 1, 36, 36)).shape == (1, 1, 5, 5)
        untrained = torch.sigmoid(net(torch.rand(1, 1, 32, 32))).mean()
    assert abs(float(untrained) - 0.01) < 0.01  # the prior
    classifier = build_model("resnet10", spatial_dims=2, in_channels=1, num_outputs=1)
    torch.save(classifier.state_dict(), tmp_path / "cls.pt")
    report = load_pretrained(net, tmp_path / "cls.pt", registered_models()["resnet10"])
    assert "conv1.weight" in report.loaded and torch.equal(net.conv1.weight, classifier.conv1.weight)
    head = {id(p) for p in net.fc.parameters()}
    assert not head & {id(p) for p in backbone_parameters(net, registered_models()["resnet10"])}


def _prediction(rows: list[dict]) -> Prediction:
    table = pd.DataFrame(rows)
    return Prediction(table.drop(columns=["prob", "detections"]), table[["prob", "detections"]])


def test_localisation_figures_match_the_metrics_and_an_independent_froc():
    """AP and FROC of the task's evaluation equal the COCO AP (checked against pycocotools) and a FROC
    counted here by hand; only finding boxes of positive images are truths."""
    rng = np.random.default_rng(3)
    rows = []
    for i in range(40):
        positive = i % 3 == 0
        x, y = rng.uniform(0, 80, 2)
        boxes = [{"label": "m", "birads": 5, "x": x, "y": y, "w": 20, "h": 20}] if positive else []
        boxes += [{"label": "m", "birads": 2, "x": 5, "y": 5, "w": 10, "h": 10}] if i % 5 == 0 else []
        marks = []
        if positive and rng.random() < 0.8:
            shift = rng.uniform(-6, 6, 2)
            marks.append({"x0": x + shift[0], "y0": y + shift[1], "x1": x + 20 + shift[0], "y1": y + 20 + shift[1],
                          "score": float(rng.uniform(0.3, 1))})  # fmt: skip
        for _ in range(rng.integers(0, 3)):
            a, b = rng.uniform(0, 90, 2)
            marks.append({"x0": a, "y0": b, "x1": a + 10, "y1": b + 10, "score": float(rng.uniform(0, 0.8))})
        rows.append({"case_id": f"c{i}", "patient_id": f"p{i // 2}", "target": int(positive), "image": f"{i}.png",
                     "boxes": json.dumps(boxes), "prob": max([m["score"] for m in marks], default=0.0),
                     "detections": json.dumps(marks)})  # fmt: skip
    task = _task()
    prediction = _prediction(rows)
    figures, details, _ = task.evaluate(prediction, prediction, split="test", operating_points=["youden"],
                                        bootstrap=50)  # fmt: skip
    truths = pd.DataFrame([(r["case_id"], b["x"], b["y"], b["x"] + 20, b["y"] + 20) for r in rows
                           for b in json.loads(r["boxes"]) if b["birads"] == 5],
                          columns=["image", "x0", "y0", "x1", "y1"])  # fmt: skip
    found = pd.DataFrame([(r["case_id"], m["x0"], m["y0"], m["x1"], m["y1"], m["score"]) for r in rows
                          for m in json.loads(r["detections"])],
                         columns=["image", "x0", "y0", "x1", "y1", "score"])  # fmt: skip
    assert figures["lesion AP@0.3"].estimate == pytest.approx(average_precision_boxes(found, truths, iou=0.3))
    assert details["localisation"]["findings"] == len(truths) == 14
    # FROC by hand: a mark hits a finding it overlaps with IoU >= 0.3; the rest are false positives
    hits, fps = [], []
    for image, group in found.groupby("image"):
        theirs = truths[truths["image"] == image]
        for _, mark in group.iterrows():
            overlap = [_iou(mark, t) for _, t in theirs.iterrows()]
            (hits if overlap and max(overlap) >= 0.3 else fps).append(mark["score"])
    kind = np.r_[np.ones(len(hits)), np.zeros(len(fps)), np.full(len(truths) - len(hits), 2), np.full(40, 3)]
    probability = np.r_[hits, fps, np.full(len(truths) - len(hits) + 40, np.nan)]
    fpi, sens, _ = froc_curve(kind.astype(int), probability)
    expected = float(sensitivity_at(fpi, sens, [1.0])[0])
    assert figures["lesion sensitivity @ 1 FP/image"].estimate == pytest.approx(expected)
    assert figures["lesion AP@0.3"].low <= figures["lesion AP@0.3"].estimate <= figures["lesion AP@0.3"].high
    assert "exam auc" not in figures and "auc" in figures  # no fusion asked: image figures only
    entries = match_boxes(found, truths, iou=0.3, images=[r["case_id"] for r in rows])
    assert entries.detected == len(hits) and entries.false_positives == len(fps)


def _iou(a, b) -> float:
    w = max(0.0, min(a["x1"], b["x1"]) - max(a["x0"], b["x0"]))
    h = max(0.0, min(a["y1"], b["y1"]) - max(a["y0"], b["y0"]))
    inter = w * h
    area = (a["x1"] - a["x0"]) * (a["y1"] - a["y0"]) + (b["x1"] - b["x0"]) * (b["y1"] - b["y0"])
    return inter / (area - inter)


def test_a_split_without_finding_boxes_has_no_localisation_figures():
    rows = [{"case_id": f"c{i}", "patient_id": f"p{i}", "target": i % 2, "image": "x.png", "boxes": "",
             "prob": 0.1 * i, "detections": "[]"} for i in range(6)]  # fmt: skip
    figures, details, _ = _task().evaluate(_prediction(rows), _prediction(rows), split="test",
                                           operating_points=["youden"], bootstrap=20)  # fmt: skip
    assert not any(name.startswith("lesion") for name in figures)
    assert details["localisation"]["undefined"] == "no finding box in this split"


# --- several findings at once (chest X-ray findings) -------------------------------------------
MULTI = {"kind": "detection2d", "findings": ["effusion", "nodule"], "aliases": {"nodule": ["Mass"]}, "patch": 16,
         "patches_per_epoch": 32}  # fmt: skip


def _multi_row(i: int, effusion: float, nodule: float, boxes: list[dict] | None, split: str = "train") -> dict:
    return {"case_id": f"c{i}", "patient_id": f"p{i // 2}", "image": f"i{i}.png", "split": split,
            "target_effusion": effusion, "target_nodule": nodule,
            "boxes": json.dumps(boxes) if boxes is not None else ""}  # fmt: skip


def _named(label: str, x: float = 4, y: float = 8, w: float = 8) -> dict:
    return {"label": label, "x": x, "y": y, "w": w, "h": w}


def test_several_findings_get_a_map_each_from_the_boxes_that_name_them(tmp_path):
    manifest = _manifest(tmp_path, [
        _multi_row(0, 1, 1, [_named("Effusion"), _named("mass", x=20)]),  # a box each; "mass" is nodule's alias
        _multi_row(1, 1, 0, [_named("Effusion"), _named("Nodule", x=20)]),  # a nodule box, but the label says no
        _multi_row(2, 1, float("nan"), [_named("Pneumothorax")]),  # effusion unlocated; nodule unknown
        _multi_row(3, 0, 0, None),
    ])  # fmt: skip
    task = task_for(MULTI)
    data = task.prepare(manifest, Preprocess2D(size=32, channels=1), tmp_path / "cache", progress=None)
    images = data.inputs
    assert [b[:, 4].tolist() for b in images.boxes] == [[0, 1], [0, -1], [-1], []]
    assert images.unknown.tolist() == [[False, False], [False, False], [True, False], [False, False]]
    maps = images.map(0)
    assert maps.shape == (2, 32, 32)
    assert maps[0, 7, 7] == FINDING and maps[0, 10, 22] == OTHER  # effusion's map: the mass box is another box
    assert maps[1, 7, 7] == OTHER and maps[1, 10, 22] == FINDING
    assert images.map(1)[1, 10, 22] == OTHER  # a box of a finding the image does not have teaches its absence
    assert (images.map(2)[0] == UNKNOWN).all() and (images.map(2)[1] == UNLABELLED).all()
    assert np.isnan(data.targets[2, 1]) and data.targets[0].tolist() == [1, 1]
    assert task.classifier.kind == "multilabel" and task.metric_names() == ("macro_auc",)
    net = task.network(load_recipe("mammo-screening", ["model.name=resnet10"]).model, 1).eval()
    with torch.no_grad():
        assert net(torch.rand(2, 1, 32, 32)).shape == (2, 2, 4, 4)


def test_whole_images_teach_unlocated_findings_and_patches_leave_them_out(tmp_path):
    manifest = _manifest(tmp_path, [
        _multi_row(0, 1, 0, [_named("Effusion")]),
        _multi_row(1, 1, 1, [_named("Effusion", x=16)]),  # the nodule is unlocated
        _multi_row(2, float("nan"), 1, None),  # nothing known in a patch: left out of patches
    ])  # fmt: skip
    data = task_for(MULTI).prepare(manifest, Preprocess2D(size=32, channels=1), tmp_path / "cache", progress=None)
    np.random.seed(1)
    patches = BoxPatches(data.inputs, [0, 1, 2], patch=16, samples=60, finding_rate=0.5, other_rate=0.0)
    assert patches.items == [0, 1] and not patches.whole
    drawn = [patches[k][1] for k in range(60)]
    assert all(m.shape == (2, 16, 16) and not (m == UNKNOWN).any() for m in drawn)
    assert any((m[1] == UNLABELLED).all() for m in drawn)  # image 1's nodule: unknown within a patch
    whole = BoxPatches(data.inputs, [0, 1, 2], patch=64, samples=60, finding_rate=0.5, other_rate=0.0)
    assert whole.whole and whole.items == [0, 1, 2]
    items = [whole[k] for k in range(60)]
    assert all(image.shape == (1, 32, 32) and m.shape == (2, 32, 32) for image, m in items)
    assert any((m[1] == UNKNOWN).all() for _, m in items)  # learnt from the image's label
    unlocated = [(image, m) for image, m in items if (m[0] == UNLABELLED).all()]
    assert unlocated and all(torch.equal(image, torch.from_numpy(data.inputs.image(2))) for image, _ in unlocated)


def test_the_loss_of_several_findings_skips_unlabelled_ones_and_scores_each_map():
    task = task_for(MULTI)
    maps = torch.zeros(2, 2, 16, 16, dtype=torch.uint8)
    maps[0, 0, 0:8, 8:16] = FINDING  # image 0 has an effusion top right
    maps[1, 1] = UNLABELLED  # image 1: nodule unknown
    right = torch.full((2, 2, 2, 2), -6.0)
    right[0, 0, 0, 1] = 6.0
    assert task.loss(right, maps) < 0.05
    swapped = right.flip(1)  # the effusion's cell on the nodule's map
    assert task.loss(swapped, maps) > 1
    unlabelled_only = right.clone()
    unlabelled_only[1, 1] = 6.0  # whatever is said about image 1's nodule costs nothing
    assert task.loss(unlabelled_only, maps) == pytest.approx(float(task.loss(right, maps)), abs=1e-6)
    scored = task.score(right, maps)
    assert scored == {"macro_auc": 1.0}  # effusion's AUC; the nodule's, with one labelled image, is undefined
    with pytest.raises(InputError, match="cell logits"):
        task.loss(torch.zeros(2, 3, 2, 2), maps)


def test_several_findings_are_scored_per_finding_and_together_against_independent_counts():
    """Per-finding AUCs and macro AUC as a multi-label classifier's; per-finding AP equal to COCO's AP
    of that finding's detections and boxes; the mAP their mean; the top-box hit rate counted by hand."""
    rng = np.random.default_rng(5)
    rows = []
    for i in range(48):
        labels = {"effusion": int(i % 3 == 0), "nodule": int(i % 4 == 1)}
        boxes, marks = [], []
        for name, present in labels.items():
            x, y = rng.uniform(0, 80, 2)
            if present:
                boxes.append({"label": "Mass" if name == "nodule" and i % 8 == 1 else name.title(), "x": x, "y": y,
                              "w": 20, "h": 20})  # fmt: skip
                if rng.random() < 0.75:
                    shift = rng.uniform(-7, 7, 2)
                    marks.append({"x0": x + shift[0], "y0": y + shift[1], "x1": x + 20 + shift[0],
                                  "y1": y + 20 + shift[1], "score": float(rng.uniform(0.2, 1)),
                                  "finding": name})  # fmt: skip
            for _ in range(rng.integers(0, 2)):
                a, b = rng.uniform(0, 90, 2)
                marks.append({"x0": a, "y0": b, "x1": a + 10, "y1": b + 10, "score": float(rng.uniform(0, 0.9)),
                              "finding": name})  # fmt: skip
        probs = {f"prob_{n}": max([m["score"] for m in marks if m["finding"] == n], default=0.0) for n in labels}
        targets = {f"target_{n}": v for n, v in labels.items()}
        rows.append({"case_id": f"c{i}", "patient_id": f"p{i // 3}", "image": f"{i}.png", "boxes": json.dumps(boxes),
                     **targets, **probs, "detections": json.dumps(marks)})  # fmt: skip
    table = pd.DataFrame(rows)
    scores = [c for c in table.columns if c.startswith("prob_")] + ["detections"]
    prediction = Prediction(table.drop(columns=scores), table[scores])
    figures, details, _ = task_for(MULTI).evaluate(prediction, prediction, split="test", operating_points=["youden"],
                                                   bootstrap=40)  # fmt: skip
    from sklearn.metrics import roc_auc_score

    aucs = [roc_auc_score(table[f"target_{n}"], table[f"prob_{n}"]) for n in ("effusion", "nodule")]
    assert figures["auc effusion"].estimate == pytest.approx(aucs[0])
    assert figures["macro auc"].estimate == pytest.approx(np.mean(aucs))
    columns = ["image", "x0", "y0", "x1", "y1"]
    each, hits, total = [], 0, 0
    for name in ("effusion", "nodule"):
        truths = pd.DataFrame([(r["case_id"], b["x"], b["y"], b["x"] + 20, b["y"] + 20) for r in rows
                               for b in json.loads(r["boxes"]) if b["label"].lower() in (name, "mass" if name ==
                               "nodule" else name)], columns=columns)  # fmt: skip
        found = pd.DataFrame([(r["case_id"], m["x0"], m["y0"], m["x1"], m["y1"], m["score"]) for r in rows
                              for m in json.loads(r["detections"]) if m["finding"] == name],
                             columns=[*columns, "score"])  # fmt: skip
        each.append(average_precision_boxes(found, truths, iou=0.3))
        assert figures[f"lesion AP@0.3 {name}"].estimate == pytest.approx(each[-1])
        for _, box in truths.iterrows():  # the top box of its finding in its image, by hand
            mine = found[found["image"] == box["image"]]
            total += 1
            if len(mine):
                hits += _iou(mine.loc[mine["score"].idxmax()], box) >= 0.3
    assert figures["lesion mAP@0.3"].estimate == pytest.approx(np.mean(each))
    assert figures["top box hit @ IoU 0.3"].estimate == pytest.approx(hits / total)
    assert details["localisation"]["findings"] == total
    assert details["localisation"]["per_finding"]["nodule"]["froc"]["findings"] == sum(r["target_nodule"] for r in rows)


def test_several_findings_settings_are_checked(tmp_path):
    for changes, message in (({"box_labels": ["x"]}, "box_labels cannot be set with task.findings"),
                             ({"fusion": "max"}, "fusion cannot be set"), ({"target": "y"}, "target cannot be set"),
                             ({"findings": ["a", "A"]}, "distinct names"), ({"findings": []}, "distinct names"),
                             ({"aliases": {"mass": ["x"]}}, "not among the findings")):  # fmt: skip
        with pytest.raises(ValueError, match=message):  # a recipe names it as a ConfigError (below)
            task_for({**MULTI, **changes})
    with pytest.raises(ConfigError, match="classes cannot be set"):
        load_recipe("mammo-screening", ['task.findings=["mass"]', "task.fusion=null", "task.classes=[absent, present]"])
    recipe = load_recipe("mammo-screening", ['task.findings=["mass"]', "task.fusion=null"])  # the defaults'
    assert task_for(recipe.task.model_dump()).settings == recipe.task  # a saved spec loads again
    with pytest.raises(ConfigError, match=r"set task\.findings too"):
        load_recipe("mammo-screening", ['task.aliases={"mass": ["x"]}'])
    rows = [_multi_row(0, 1, 0, [_named("Effusion")]), _multi_row(1, 0, 1, None), _multi_row(2, 1, 1, None, "val"),
            _multi_row(3, 0, 0, None, "val")]  # fmt: skip
    task = task_for(MULTI)
    data = task.prepare(_manifest(tmp_path, rows), Preprocess2D(size=32, channels=1), tmp_path / "c", progress=None)
    prediction = pd.DataFrame(rows).assign(prob_effusion=0.5, prob_nodule=0.5,
                                           detections=json.dumps([{"x0": 0, "y0": 0, "x1": 1, "y1": 1, "score": 0.5,
                                                                   "finding": "cardiomegaly"}]))  # fmt: skip
    with pytest.raises(InputError, match="'cardiomegaly', which is not among the findings"):
        task._boxes_and_marks(prediction)
    assert data.inputs.unknown[1].tolist() == [False, True]
    typo = task_for({**MULTI, "findings": ["efusion", "nodule"], "aliases": {}})
    with pytest.raises(ConfigError, match=r"no \['target_efusion'\] column.*set task\.findings to match"):
        typo.prepare(_manifest(tmp_path, rows), Preprocess2D(size=32, channels=1), tmp_path / "c", progress=None)
