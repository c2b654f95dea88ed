"""Class activation maps: the identity that ties them to the logits, boxes from them, and the boxes
a multi-label classifier reports and evaluation scores (source pixels, any aspect)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from medsight.core.errors import ConfigError, InputError
from medsight.data.manifest import Manifest
from medsight.models.cam import cam_box, class_activation_maps
from medsight.models.registry import build_model
from medsight.tasks import ClassificationTask, Prediction
from medsight.transforms.image2d import Preprocess2D


@pytest.mark.parametrize("name", ["resnet10", "densenet121", "efficientnet-b0"])
def test_with_average_pooling_each_logit_is_its_maps_mean_plus_the_bias(name):
    torch.manual_seed(0)
    model = build_model(name, spatial_dims=2, in_channels=1, num_outputs=3).eval()
    logits, maps = class_activation_maps(model, torch.rand(2, 1, 96, 96))
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert maps.shape[:2] == (2, 3) and maps.shape[-1] > 1
    torch.testing.assert_close(maps.mean((-2, -1)) + head.bias.detach(), logits, rtol=1e-4, atol=1e-4)


def test_networks_without_a_linear_head_are_refused():
    with pytest.raises(ConfigError, match="no linear head"):
        class_activation_maps(nn.Conv2d(1, 2, 3), torch.rand(1, 1, 8, 8))


def test_the_box_holds_the_peak_region_only():
    cam = np.zeros((8, 8))
    cam[2:4, 5:7] = 1.0  # the strongest region
    cam[6, 0] = 0.4  # weaker elsewhere
    assert cam_box(cam, 8, fraction=0.5) == (5.0, 2.0, 7.0, 4.0, 5.5, 2.5)
    x0, y0, x1, y1, x, y = cam_box(cam, 64)
    assert 36 <= x0 < 44 and 12 <= y0 < 20 and 52 < x1 <= 60 and 28 < y1 <= 36  # resized with the image
    assert x0 < x < x1 and y0 < y < y1
    assert cam_box(np.ones((4, 4)), 16)[:4] == (0.0, 0.0, 16.0, 16.0)  # a flat map says nothing: the whole image
    with pytest.raises(InputError, match="finite"):
        cam_box(np.full((4, 4), np.nan), 16)


class _Bright(nn.Module):
    """A classifier whose feature map is the image itself: its CAM for every finding is the image."""

    def __init__(self, findings: int) -> None:
        super().__init__()
        self.features = nn.Conv2d(1, 1, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1, findings)
        with torch.no_grad():
            self.features.weight.fill_(1.0)
            self.fc.weight.fill_(1.0)
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def test_findings_boxes_come_back_in_source_pixels_and_are_scored(tmp_path):
    """Each image (40 wide, 60 high) has a bright rectangle given as a Nodule box: the CAM box of
    'nodule' lands on it in source pixels (hit), while an Effusion box elsewhere is missed."""
    rows = []
    for i in range(6):
        pixels = np.zeros((60, 40), np.uint8)
        x, y = 5 + 3 * i, 10 + 4 * i
        pixels[y : y + 12, x : x + 10] = 255
        Image.fromarray(pixels).save(tmp_path / f"i{i}.png")
        boxes = [{"label": "Nodule", "x": x, "y": y, "w": 10, "h": 12}]
        if i % 2:
            boxes.append({"label": "Effusion", "x": 0, "y": 48, "w": 40, "h": 12})
        rows.append({"case_id": f"c{i}", "patient_id": f"p{i}", "image": f"i{i}.png", "split": "test",
                     "target_nodule": 1, "target_effusion": i % 2,
                     "boxes": json.dumps(boxes) if i < 5 else ""})  # fmt: skip
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    task = ClassificationTask("multilabel", ("nodule", "effusion"))
    data = task.prepare(Manifest.load(tmp_path / "m.csv"), Preprocess2D(size=32, channels=1), tmp_path / "c",
                        progress=None)  # fmt: skip
    cases, scores = task.predict_split(_Bright(2), data, np.arange(6))
    assert scores["cam_boxes"].iloc[5] == ""  # no boxes, no localisation
    for i in range(5):
        nodule = json.loads(scores["cam_boxes"].iloc[i])["nodule"]
        x, y = 5 + 3 * i, 10 + 4 * i
        np.testing.assert_allclose(nodule["box"], [x, y, x + 10, y + 12], atol=2.0)
        assert x <= nodule["peak"][0] <= x + 10 and y <= nodule["peak"][1] <= y + 12
    table = Prediction(cases, scores).table()
    from medsight.tasks.classification_report import _cam_localisation

    found = _cam_localisation(table, ["nodule", "effusion"], table["patient_id"].to_numpy(), 20)
    assert found["findings"]["nodule"]["hit_rate"]["estimate"] == 1.0
    assert found["findings"]["nodule"]["pointing"]["estimate"] == 1.0
    assert found["findings"]["effusion"]["hit_rate"]["estimate"] == 0.0 and found["boxes"] == 7
    assert found["findings"]["effusion"]["pointing"]["estimate"] == 0.0
