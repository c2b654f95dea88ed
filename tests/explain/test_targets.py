"""What each task offers to explain, through the seam: targets, their logits, default and boxes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medsight.core.errors import ConfigError, InputError
from medsight.tasks import task_for


def test_ordinal_targets_are_each_grade_or_worse_with_the_corn_probabilities():
    task = task_for({"kind": "ordinal", "classes": ["none", "mild", "moderate", "severe"], "referable_grade": 2})
    assert task.explain_targets() == ("mild+", "moderate+", "severe+")
    logits = torch.randn(5, 3) * 3
    probabilities = task.probabilities(logits)
    explained = task.explain_probabilities(task.explain_logits(logits))
    for k in range(1, 4):
        torch.testing.assert_close(explained[:, k - 1], task.at_least(probabilities, k), rtol=1e-4, atol=1e-5)
    assert task.explain_default(np.array([0.9, 0.2, 0.1])) == 1  # the referable grade, whatever is likely
    unnamed = task_for({"kind": "ordinal", "classes": ["none", "mild", "moderate"]})
    assert unnamed.explain_default(np.array([0.9, 0.6])) == 1 and unnamed.explain_default(np.array([0.2, 0.1])) == 0


def test_binary_multiclass_and_multilabel_targets():
    binary = task_for({"kind": "binary", "classes": ["benign", "malignant"]})
    assert binary.explain_targets() == ("malignant",)
    logits = torch.randn(4, 1)
    torch.testing.assert_close(binary.explain_probabilities(binary.explain_logits(logits))[:, 0],
                               binary.probabilities(logits))  # fmt: skip
    multiclass = task_for({"kind": "multiclass", "classes": ["a", "b", "c"]})
    logits = torch.randn(4, 3)
    torch.testing.assert_close(multiclass.explain_probabilities(multiclass.explain_logits(logits)),
                               multiclass.probabilities(logits))  # fmt: skip
    assert multiclass.explain_default(np.array([0.2, 0.5, 0.3])) == 1


def test_boxes_of_a_target_are_the_ones_labelled_with_it():
    task = task_for({"kind": "multilabel", "classes": ["Mass", "Effusion"]})
    cell = json.dumps([{"label": "mass", "x": 1, "y": 2, "w": 3, "h": 4}, {"label": "Effusion", "x": 0, "y": 0,
                                                                           "w": 10, "h": 5}])  # fmt: skip
    np.testing.assert_allclose(task.explain_boxes(cell, "c1", 0), [[1, 2, 4, 6]])
    np.testing.assert_allclose(task.explain_boxes(cell, "c1", 1), [[0, 0, 10, 5]])
    assert task.explain_boxes("", "c1", 0).shape == (0, 4)
    single = task_for({"kind": "binary", "classes": ["normal", "cancer"]})
    assert len(single.explain_boxes(cell, "c1", 0)) == 2  # one target: every box shows it
    with pytest.raises(InputError, match="case c9: box 1"):
        task.explain_boxes(json.dumps([[1, 2, 3, 4]]), "c9", 0)
    with pytest.raises(InputError, match="not JSON"):
        task.explain_boxes("{oops", "c9", 0)


def test_the_detectors_boxes_follow_its_aliases():
    task = task_for({"kind": "detection2d", "findings": ["mass", "effusion"], "aliases": {"mass": ["nodule"]}})
    cell = json.dumps([{"label": "Nodule", "x": 1, "y": 1, "w": 2, "h": 2}, {"label": "scar", "x": 5, "y": 5,
                                                                            "w": 1, "h": 1}])  # fmt: skip
    np.testing.assert_allclose(task.explain_boxes(cell, "c1", 0), [[1, 1, 3, 3]])
    assert task.explain_boxes(cell, "c1", 1).shape == (0, 4)


def test_3d_targets_are_structures_by_their_share_and_the_detectors_best_voxel():
    from medsight.tasks.base import Task

    segmentation = task_for({"kind": "segmentation", "labels": {"tumour": 1, "core": 2}})
    assert segmentation.explain_targets() == ("tumour", "core")
    logits = torch.randn(2, 3, 4, 5, 6)
    share = torch.softmax(logits, dim=1)[:, 1:].mean(dim=(2, 3, 4))
    torch.testing.assert_close(segmentation.explain_probabilities(segmentation.explain_logits(logits)), share)
    regions = task_for({"kind": "segmentation", "labels": {"edema": 1, "core": 2},
                        "regions": {"WT": [1, 2], "TC": [2]}})  # fmt: skip
    assert regions.explain_targets() == ("WT", "TC")
    torch.testing.assert_close(regions.explain_probabilities(regions.explain_logits(logits[:, :2])),
                               torch.sigmoid(logits[:, :2]).mean(dim=(2, 3, 4)))  # fmt: skip
    detection = task_for({"kind": "detection", "finding": "nodule"})
    assert detection.explain_targets() == ("nodule",)
    two = torch.randn(2, 2, 4, 5, 6)
    best = torch.softmax(two, dim=1)[:, 1].flatten(1).amax(1)
    torch.testing.assert_close(detection.explain_probabilities(detection.explain_logits(two))[:, 0], best)
    with pytest.raises(ConfigError, match="cannot be explained"):
        Task.explain_targets(segmentation)  # what a task that offers nothing says
    with pytest.raises(ConfigError, match="explains prepared images"):
        task_for({"kind": "binary", "classes": ["a", "b"]}).explain_volume(None, None, None)
