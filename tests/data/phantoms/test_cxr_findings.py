"""Chest radiograph phantom: NIH layout read back, boxes inside the image and on the findings,
findings co-occur, follow-ups share a patient, official test list is patient-disjoint."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medsight.data import build_manifest
from medsight.data.phantoms import make_phantom
from medsight.data.phantoms.base import case_rng
from medsight.data.phantoms.cxr_findings import radiograph


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp("cxr") / "nih"
    make_phantom("cxr-findings", out, cases=60, seed=1)
    return out


def test_nih_layout_read_back(made):
    m = build_manifest(made)
    assert m.info["dataset"] == "nih-cxr14" and len(m) == 60
    t = m.table
    assert t["patient_id"].nunique() < 60  # follow-ups
    test_patients = set(t.loc[t["split"] == "test", "patient_id"])
    assert test_patients and not test_patients & set(t.loc[t["split"] != "test", "patient_id"])
    positives = t[[f"target_{f}" for f in ("nodule", "effusion", "cardiomegaly", "atelectasis")]].sum()
    assert (positives > 0).all()


def test_boxes_match_labels_and_lie_in_the_image(made):
    m = build_manifest(made)
    for i, (_, row) in enumerate(m.table.iterrows()):
        for box in m.boxes(i):
            assert row[f"target_{box['label'].lower()}"] == 1
            assert box["x"] >= 0 and box["y"] >= 0
            assert box["x"] + box["w"] <= 512 and box["y"] + box["h"] <= 512
            assert box["w"] >= 3 and box["h"] >= 3


def test_cardiomegaly_means_a_cardiothoracic_ratio_above_a_half(made):
    truth = pd.read_csv(made / "phantom_truth.csv")
    big = truth["Finding Labels"].str.contains("Cardiomegaly")
    assert (truth.loc[big, "cardiothoracic_ratio"] > 0.5).all()
    assert (truth.loc[~big, "cardiothoracic_ratio"] <= 0.5).all()
    assert truth.loc[~big, "cardiothoracic_ratio"].max() > 0.45  # borderline normal hearts exist


def test_findings_are_visible_where_boxed():
    rng_a, rng_b = case_rng(9, 0), case_rng(9, 0)
    clear, _, _ = radiograph(rng_a, set())
    nodule, boxes, _ = radiograph(rng_b, {"Nodule"})
    (box,) = boxes
    x, y, w, h = (round(box[k]) for k in ("x", "y", "w", "h"))
    inside = nodule[y : y + h, x : x + w].astype(float) - clear[y : y + h, x : x + w]
    assert inside.mean() > 8  # the nodule is brighter than the lung it sits in


def test_deterministic(tmp_path):
    a = make_phantom("cxr-findings", tmp_path / "a", cases=3, seed=2)
    b = make_phantom("cxr-findings", tmp_path / "b", cases=3, seed=2)
    assert (a / "Data_Entry_2017.csv").read_text() == (b / "Data_Entry_2017.csv").read_text()
    name = (a / "Data_Entry_2017.csv").read_text().splitlines()[1].split(",")[0]
    assert np.array_equal(
        np.frombuffer((a / "images_001" / "images" / name).read_bytes(), np.uint8),
        np.frombuffer((b / "images_001" / "images" / name).read_bytes(), np.uint8),
    )


@pytest.mark.parametrize("blur", [0, 0.6, 2, 6, 25])
def test_a_layer_blurred_on_its_box_equals_the_whole_film_blurred(blur):
    """_layer blurs only the drawing's box and a margin: the pixels equal blurring the whole film,
    for shapes in the middle, at an edge and in a corner."""
    from PIL import Image, ImageDraw, ImageFilter

    from medsight.data.phantoms.cxr_findings import SIZE, _layer

    shapes = [
        lambda d: d.ellipse((200, 220, 260, 300), fill=255),
        lambda d: d.polygon([(0, 100), (40, 90), (30, 200)], fill=255),
        lambda d: d.line([(SIZE - 5, SIZE - 60), (SIZE - 1, SIZE - 1)], fill=200, width=3),
        lambda d: d.rectangle((0, 0, SIZE - 1, 10), fill=255),
    ]
    for draw in shapes:
        whole = Image.new("L", (SIZE, SIZE), 0)
        draw(ImageDraw.Draw(whole))
        if blur:
            whole = whole.filter(ImageFilter.GaussianBlur(blur))
        np.testing.assert_array_equal(_layer(draw, blur), np.asarray(whole, np.float32) / 255.0)
    assert not _layer(lambda d: None, blur).any()  # nothing drawn
