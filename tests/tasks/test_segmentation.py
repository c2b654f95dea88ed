"""The segmentation task: regions painted back to labels, loss and scores, patches, the source grid on real files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from medsight.core.errors import ConfigError, InputError
from medsight.core.geometry import Geometry
from medsight.core.volume import Volume
from medsight.metrics.segmentation import dice
from medsight.tasks import SegmentationSpec, task_for
from medsight.transforms.volume3d import Preprocessed, preprocess_case, restore

BRATS = {"kind": "segmentation", "labels": {"NCR": 1, "ED": 2, "ET": 4},
         "regions": {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}}  # fmt: skip


def _identity_case(shape):
    return Preprocessed(np.zeros((1, *shape), np.float32), None, (1.0, 1.0, 1.0), shape, tuple((0, s) for s in shape))


def test_regions_are_painted_back_to_label_codes_from_the_largest():
    task = task_for(BRATS)
    assert [code for _, code in task.painting] == [2, 1, 4]  # WT paints ED, TC paints NCR, ET paints ET
    truth = np.zeros((4, 6, 6), np.uint8)
    truth[1:3, 1:5, 1:5] = 2
    truth[1:3, 2:4, 2:4] = 1
    truth[2, 2, 2] = 4
    masks = task.structure_masks(truth)
    logits = torch.from_numpy(np.stack([np.where(masks[n], 5.0, -5.0) for n in task.structures]).astype(np.float32))
    from medsight.planning import Plan

    painted = task.label_map(logits, Plan.model_construct(keep_largest=[], min_component_ml=0.0),
                             _identity_case(truth.shape))  # fmt: skip
    np.testing.assert_array_equal(painted, truth)


def test_labels_without_regions_take_the_most_likely_class_and_keep_the_largest_component():
    from medsight.planning import Plan

    task = task_for({"kind": "segmentation", "labels": {"liver": 1, "tumour": 2}})
    truth = np.zeros((4, 8, 8), np.uint8)
    truth[:, 1:4, 1:4] = 1
    truth[:, 6:8, 6:8] = 1  # a second, smaller liver component: removed when the plan keeps the largest
    logits = torch.from_numpy(np.eye(3, dtype=np.float32)[truth].transpose(3, 0, 1, 2) * 10)
    plan = Plan.model_construct(keep_largest=[])
    np.testing.assert_array_equal(task.label_map(logits, plan, _identity_case(truth.shape)), truth)
    plan = Plan.model_construct(keep_largest=[1])
    kept = task.label_map(logits, plan, _identity_case(truth.shape))
    assert kept[:, 6:8, 6:8].sum() == 0 and (kept[:, 1:4, 1:4] == 1).all()


def test_regions_keep_their_largest_component_when_the_plan_names_them():
    from medsight.planning import Plan

    task = task_for(BRATS)
    labels = np.zeros((6, 12, 12), np.uint8)
    labels[1:5, 1:6, 1:6] = 2
    labels[2:4, 2:4, 2:4] = 4
    labels[4, 10, 10] = 2  # a speck of oedema far from the tumour
    labels[1, 10, 1] = 4  # and one of enhancing tumour
    kept = task.postprocess(labels.copy(), Plan.model_construct(keep_largest=["WT"], min_component_ml=0.0))
    assert kept[4, 10, 10] == 0 and kept[1, 10, 1] == 0 and (kept[1:5, 1:6, 1:6] > 0).all()
    only_et = task.postprocess(labels.copy(), Plan.model_construct(keep_largest=["ET"], min_component_ml=0.0))
    assert only_et[1, 10, 1] == 0 and only_et[4, 10, 10] == 2  # the oedema speck is not ET's business
    with pytest.raises(ConfigError, match="keep_largest names 'XX'"):
        task.postprocess(labels, Plan.model_construct(keep_largest=["XX"], min_component_ml=0.0))


def _settled(tmp_path, monkeypatch, change):
    """What settle chooses when the "prediction" of each val case is its reference, changed by ``change``."""
    import medsight.tasks.segmentation as seg
    from medsight.data.reading import read_case_image
    from medsight.engine.fit import prepare_data

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    recipe = _recipe(tmp_path)
    data = prepare_data(recipe, _tiny_data(data_dir), cache_dir=tmp_path / "cache")
    task = task_for(recipe.task)
    monkeypatch.setattr(seg, "sliding_window", lambda model, image, plan, **kw: torch.zeros(1))

    def painted(logits, entry):
        row = data.manifest.table.iloc[entry.row]
        return change(np.asarray(read_case_image(data.manifest, row, entry.label_column).array[0]).astype(np.uint8))

    monkeypatch.setattr(task, "_painted", painted)
    calls = []
    settled = task.settle(torch.nn.Identity(), data, data.indices("val"), progress=lambda *a: calls.append(a))
    assert calls[-1] == ("choosing postprocessing on the validation images", 2, 2)  # a bar for the long part
    return data.preprocess, settled


def test_settle_keeps_the_largest_component_where_validation_gains(tmp_path, monkeypatch):
    def speck(labels):
        labels = labels.copy()
        labels[0, 0, 0] = 1  # a false positive far from the lesion
        return labels

    planned, settled = _settled(tmp_path, monkeypatch, speck)
    assert settled.keep_largest == ["lesion"] and settled.patch_size == planned.patch_size


def test_settle_leaves_a_structure_alone_where_keeping_the_largest_loses_true_voxels(tmp_path, monkeypatch):
    def split(labels):
        labels = labels.copy()
        z = np.flatnonzero(labels.any(axis=(1, 2)))
        labels[z[len(z) // 2]] = 0  # the prediction cuts the lesion in two: both halves are right
        return labels

    planned, settled = _settled(tmp_path, monkeypatch, split)
    assert planned.keep_largest == [1]  # the fingerprint saw one lesion per case
    assert settled.keep_largest == []  # but on validation, keeping one half loses Dice


def test_settle_follows_the_fingerprint_where_validation_cannot_tell(tmp_path, monkeypatch):
    planned, settled = _settled(tmp_path, monkeypatch, lambda labels: labels)
    assert planned.keep_largest == [1] and settled.keep_largest == ["lesion"]
    assert settled.min_component_ml == planned.min_component_ml


@pytest.mark.parametrize(
    ("change", "message"),
    [({"regions": {"A": [1, 2], "B": [1, 2]}}, "exactly one label code"),
     ({"regions": {"A": [1, 9]}}, "unknown: \\[9\\]"),
     ({"labels": {"a": 0}}, "1..255"),
     ({"labels": {"a": 1, "b": 1}}, "distinct"),
     ({"ignore": 4}, "no class's"),
     ({"ignore": 0}, "1..255")],
)  # fmt: skip
def test_bad_label_and_region_specs_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        SegmentationSpec(**{**BRATS, **change})


def test_loss_and_validation_dice():
    task = task_for({"kind": "segmentation", "labels": {"a": 1, "b": 2}})
    rng = np.random.default_rng(0)
    targets = torch.from_numpy(rng.integers(0, 3, size=(2, 6, 8, 8)).astype(np.uint8))
    perfect = torch.nn.functional.one_hot(targets.long(), 3).movedim(-1, 1).float() * 20 - 10
    assert float(task.loss(perfect, targets)) < 0.01
    assert float(task.loss(torch.zeros_like(perfect), targets)) > 0.5
    noisy = perfect + torch.from_numpy(rng.normal(0, 15, size=perfect.shape).astype(np.float32))
    scored = task.score(noisy, targets)
    hard = noisy.argmax(1).numpy()
    for k, name in enumerate(("a", "b"), start=1):
        assert scored[f"dice_{name}"] == pytest.approx(dice(hard == k, targets.numpy() == k))
    assert scored["dice"] == pytest.approx((scored["dice_a"] + scored["dice_b"]) / 2)
    assert tuple(scored) == task.metric_names()
    with pytest.raises(InputError, match="do not match label patches"):
        task.loss(perfect[:, :, :4], targets)
    regions = task_for(BRATS)
    region_targets = torch.from_numpy(rng.choice([0, 1, 2, 3], size=(2, 6, 8, 8)).astype(np.uint8))  # indices
    masks = regions._targets(region_targets, perfect)
    assert masks.shape == (2, 3, 6, 8, 8)
    assert torch.equal(masks[:, 0].bool(), region_targets > 0)  # WT: every label
    assert torch.equal(masks[:, 2].bool(), region_targets == 3)  # ET: the third code (4)


def test_preprocessing_then_restoring_gives_back_the_source_grid():
    rng = np.random.default_rng(1)
    image = np.zeros((1, 20, 30, 30), np.float32)
    image[0, 3:17, 5:25, 4:28] = rng.normal(100, 10, size=(14, 20, 24))
    label = np.zeros((20, 30, 30), np.uint8)
    label[6:12, 10:20, 10:20] = 1
    done = preprocess_case(image, (3.0, 1.0, 1.0), (1.5, 2.0, 2.0), label=label,
                           normalization={"schemes": ["zscore"], "clips": [None], "means": [None], "stds": [None],
                                          "masks": [True]})  # fmt: skip
    assert done.box == ((3, 17), (5, 25), (4, 28)) and done.image.shape == (1, 28, 10, 12)
    assert done.spacing == pytest.approx((1.5, 2.0, 2.0))
    same = preprocess_case(image, (3.0, 1.0, 1.0), (3.0, 1.0, 1.0),
                           normalization={"schemes": ["zscore"], "clips": [None], "means": [None], "stds": [None],
                                          "masks": [True]})  # fmt: skip
    inside = same.image[0][image[0, 3:17, 5:25, 4:28] != 0]  # z-scored inside the non-zero region
    assert abs(inside.mean()) < 1e-4 and inside.std() == pytest.approx(1.0, abs=1e-3)
    probabilities = np.stack([done.label == 0, done.label == 1]).astype(np.float32)
    back = restore(probabilities, done, background=[1.0, 0.0]).argmax(0)
    # 2x downsampling quantises an edge by up to one source voxel; nothing moves beyond that
    assert back.shape == label.shape and dice(back == 1, label == 1) >= 0.85
    assert np.abs(np.argwhere(back == 1).mean(0) - np.argwhere(label == 1).mean(0)).max() <= 1.0
    kept = preprocess_case(image, (3.0, 1.0, 1.0), (3.0, 1.0, 1.0), label=label)  # cropped, not resampled
    exact = restore(np.stack([kept.label == 0, kept.label == 1]).astype(np.float32), kept, background=[1.0, 0.0])
    np.testing.assert_array_equal(exact.argmax(0), label)
    with pytest.raises(InputError, match="NaN or infinite"):
        preprocess_case(np.full((1, 4, 4, 4), np.nan, np.float32), (1, 1, 1), (1, 1, 1))


def test_patches_are_padded_and_oversampled_on_the_foreground(tmp_path):
    from medsight.data.patches import extract_patch

    image = np.arange(27, dtype=np.float32).reshape(1, 3, 3, 3)
    label = np.ones((3, 3, 3), np.uint8)
    patch, patch_label = extract_patch(image, label, (0, 0, 0), (4, 4, 4))
    assert patch.shape == (1, 4, 4, 4) and patch[0, 2, 2, 2] == 0 and patch[0, 3, 3, 3] == 13
    assert patch_label.sum() == 8  # only the part inside the volume is labelled
    empty, _ = extract_patch(image, label, (40, 0, 0), (4, 4, 4))
    assert not empty.any()


def _tiny_data(root, n=8, shape=(12, 24, 24), seed=0):
    from medsight.io import write

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        image = rng.normal(100, 10, size=shape).astype(np.float32)
        label = np.zeros(shape, np.uint8)
        label[3:9, 6 + i % 4 : 16 + i % 4, 6:16] = 1
        image[label == 1] += 120
        geometry = Geometry(spacing=(2.0, 1.0, 1.0))
        write(Volume(image[None], geometry), root / f"c{i}.nii.gz")
        write(Volume(label[None], geometry), root / f"c{i}_seg.nii.gz")
        rows.append({"case_id": f"c{i}", "patient_id": f"p{i}", "image": f"c{i}.nii.gz", "label": f"c{i}_seg.nii.gz",
                     "split": ["train", "train", "train", "train", "val", "val", "test", "test"][i % 8]})  # fmt: skip
    pd.DataFrame(rows).to_csv(root / "m.csv", index=False)
    return root / "m.csv"


def _unsure_data(root, n):
    """``_tiny_data`` whose label maps also hold code 9 (an unsure corner) in every case."""
    from medsight.data import Manifest
    from medsight.io import read, write

    manifest = Manifest.load(_tiny_data(root, n=n))
    for i in range(n):
        label = read(root / f"c{i}_seg.nii.gz")
        array = label.array.copy()
        array[0, 0:2, 0:4, 0:4] = 9
        write(label.with_array(array), root / f"c{i}_seg.nii.gz", overwrite=True)
    return manifest


def _recipe(tmp_path, **preprocess):
    spec = {"name": "tiny-seg", "task": {"kind": "segmentation", "labels": {"lesion": 1}},
            "model": {"name": "dynunet"},
            "preprocess": {"memory_gb": 2, "base_filters": 4, "modality": "MR",
                           "overrides": {"batch_size": 2, "iterations_per_epoch": 4}, **preprocess},
            "train": {"epochs": 2, "precision": "fp32", "channels_last": "off", "lr": 0.01}}  # fmt: skip
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(spec))
    from medsight.engine.recipe import load_recipe

    return load_recipe(tmp_path / "recipe.yaml")


@pytest.mark.slow
def test_labels_outside_the_schema_are_named(tmp_path):
    from medsight.engine.fit import fit
    from medsight.io import read, write

    data = tmp_path / "data"
    data.mkdir()
    manifest = _tiny_data(data)
    bad = read(data / "c2_seg.nii.gz")
    array = bad.array.copy()
    array[0, 0, 0, 0] = 7
    write(bad.with_array(array), data / "c2_seg.nii.gz", overwrite=True)
    with pytest.raises(InputError, match=r"case c2: .*holds \[7\], not among the task's label codes \[1\]"):
        fit(_recipe(tmp_path), manifest, tmp_path / "run")


@pytest.mark.slow
def test_a_given_plan_is_used_and_the_run_keeps_it(tmp_path):
    from medsight.engine.fit import fit
    from medsight.engine.plan import plan_dataset, save_plan

    data = tmp_path / "data"
    data.mkdir()
    manifest = _tiny_data(data)
    from medsight.data import Manifest

    plan = plan_dataset(Manifest.load(manifest), memory_gb=2, base_filters=4, overrides=["iterations_per_epoch=3",
                                                                                           "batch_size=2"])  # fmt: skip
    save_plan(plan, tmp_path / "plan.json")
    fit(_recipe(tmp_path, plan=str(tmp_path / "plan.json"), overrides={}), manifest, tmp_path / "run")
    from medsight.planning import Plan

    kept = Plan.model_validate_json((tmp_path / "run" / "plan.json").read_text())
    assert kept.channel_names == ["image"]  # filled in from the manifest's image column
    # postprocessing is settled on the validation split once training ends; the rest is the given plan
    settled = {"keep_largest", "min_component_ml"}
    assert kept.model_copy(update={"channel_names": []}).model_dump(exclude=settled) == plan.model_dump(exclude=settled)
    assert set(kept.keep_largest) <= {"lesion"} and kept.min_component_ml in (0.0, plan.min_component_ml)
    from medsight.tasks import ModelPackage

    assert ModelPackage.load(tmp_path / "run").preprocessing() == kept  # the predictor uses what plan.json says
    with pytest.raises(ConfigError, match=r"preprocess\.overrides make an invalid plan"):
        fit(_recipe(tmp_path, overrides={"patch_size": [5, 5, 5]}), manifest, tmp_path / "run2")


@pytest.mark.parametrize(
    ("key", "named"),
    [("patch_sise=[32,64,64]", "'patch_sise'.*did you mean 'patch_size'"),
     ("network.filterz=[8,16]", "'network.filterz'.*did you mean 'filters'"),
     ("augmentation.rotation=0.5", "'augmentation.rotation'.*did you mean 'rotation_p'")],
)  # fmt: skip
def test_a_typo_in_the_plan_overrides_is_named_when_the_recipe_is_read(key, named):
    """Before any scan is fingerprinted (minutes on a real data set), with the closest field."""
    from medsight.engine.recipe import load_recipe

    with pytest.raises(ConfigError, match=named):
        load_recipe("lung-nodule-det", [f"preprocess.overrides.{key}"])
    recipe = load_recipe("brain-tumor-seg", ["preprocess.overrides.network.filters=[8,16,32]",
                                              "preprocess.overrides.patch_size=[32,32,32]"])  # fmt: skip
    assert recipe.preprocess.overrides["network"] == {"filters": [8, 16, 32]}


@pytest.mark.slow
def test_predictions_on_real_files_keep_their_exact_grid(tmp_path, shared_data):
    """A 1-channel model predicts the real brain1 NRRD (LAS, 6.5 mm slices) and a DICOM series made
    from it: each label map has the input's grid exactly, and a 2-channel input is refused."""
    from medsight.engine.fit import fit
    from medsight.inference import Predictor
    from medsight.io import read, write

    source = shared_data / "radiomics" / "brain1_image.nrrd"
    if not source.is_file():
        pytest.skip(f"{source} is not in ../shared/data")
    data = tmp_path / "data"
    data.mkdir()
    fit(_recipe(tmp_path), _tiny_data(data), tmp_path / "run")
    predictor = Predictor.from_run(tmp_path / "run")
    brain = read(source)
    series = write(brain, tmp_path / "series", modality="MR")
    result = predictor.predict_files([source, series], masks=tmp_path / "masks")
    outputs = result.cases["output"].tolist()
    assert outputs[0].endswith("brain1_image_seg.nrrd") and outputs[1].endswith("series_seg.nii.gz")
    for given, output in zip((source, series), outputs, strict=True):
        image, labels = read(given), read(output)
        assert labels.spatial_shape == image.spatial_shape
        assert labels.geometry.isclose(image.geometry, atol=1e-3), (labels.geometry, image.geometry)
    assert (result.scores["volume_ml_lesion"] >= 0).all()
    two = brain.with_array(np.concatenate([brain.array, brain.array]))
    with pytest.raises(InputError, match="reads 1 channel"):
        predictor.predict_volumes([two])


@pytest.mark.slow
def test_a_case_folder_of_channel_files_is_one_input(tmp_path):
    """A 2-channel model finds a case's channels in its folder by name; a folder lacking one is named."""
    from medsight.engine.fit import fit
    from medsight.inference import Predictor
    from medsight.io import read, write

    data = tmp_path / "data"
    data.mkdir()
    table = pd.read_csv(_tiny_data(data))
    for i in range(len(table)):  # a second contrast: the first one inverted
        image = read(data / f"c{i}.nii.gz")
        write(image.with_array(-image.array), data / f"c{i}_flair.nii.gz")
    table = table.rename(columns={"image": "image_t1"}).assign(image_flair=[f"c{i}_flair.nii.gz" for i in range(8)])
    table.to_csv(data / "m2.csv", index=False)
    fit(_recipe(tmp_path), data / "m2.csv", tmp_path / "run")
    predictor = Predictor.from_run(tmp_path / "run")
    assert predictor.preprocess.channel_names == ["t1", "flair"]
    case = tmp_path / "case7"
    case.mkdir()
    (case / "case7_t1.nii.gz").write_bytes((data / "c7.nii.gz").read_bytes())
    (case / "case7_flair.nii.gz").write_bytes((data / "c7_flair.nii.gz").read_bytes())
    (case / "notes.txt").write_text("not an image")
    result = predictor.predict_files([case], masks=tmp_path / "masks")
    assert len(result) == 1 and result.cases["output"][0].endswith("case7_seg.nii.gz")
    assert read(result.cases["output"][0]).geometry.isclose(read(data / "c7.nii.gz").geometry)
    (case / "case7_flair.nii.gz").unlink()
    with pytest.raises(InputError, match=r"reads the channels \['t1', 'flair'\]; no file for \['flair'\]"):
        predictor.predict_files([case], masks=tmp_path / "masks")


def test_foreground_specks_smaller_than_the_plan_allows_are_removed():
    from medsight.planning import Plan

    task = task_for({"kind": "segmentation", "labels": {"lesion": 1}})
    truth = np.zeros((8, 16, 16), np.uint8)
    truth[2:6, 2:10, 2:10] = 1  # 256 voxels
    truth[7, 14, 14] = 1  # a one-voxel speck
    logits = torch.from_numpy(np.eye(2, dtype=np.float32)[truth].transpose(3, 0, 1, 2) * 10)
    plan = Plan.model_construct(keep_largest=[], min_component_ml=0.05)
    kept = task.label_map(logits, plan, _identity_case(truth.shape), (1.0, 1.0, 1.0))  # 0.05 ml = 50 voxels
    assert kept[7, 14, 14] == 0 and kept[2:6, 2:10, 2:10].all()
    coarse = task.label_map(logits, plan, _identity_case(truth.shape), (4.0, 4.0, 4.0))  # the speck is 0.064 ml
    assert coarse[7, 14, 14] == 1
    assert task.label_map(logits, plan, _identity_case(truth.shape))[7, 14, 14] == 1  # no spacing: nothing removed


def test_deep_supervision_weighs_the_coarser_heads_by_halves():
    task = task_for(BRATS)
    generator = torch.Generator().manual_seed(0)
    heads = torch.randn(2, 3, 3, 4, 8, 8, generator=generator)  # (N, heads, regions, Z, Y, X)
    targets = torch.randint(0, 4, (2, 4, 8, 8), generator=generator)
    expected = sum(w * task.loss(heads[:, i], targets) for i, w in enumerate((4 / 7, 2 / 7, 1 / 7)))
    assert float(task.loss(heads, targets)) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.slow
def test_a_deeply_supervised_plan_trains_and_predicts_full_resolution_maps(tmp_path):
    from medsight.engine.fit import fit
    from medsight.inference import Predictor
    from medsight.models import ModelChoice

    data = tmp_path / "data"
    data.mkdir()
    manifest = _tiny_data(data)
    recipe = _recipe(tmp_path, overrides={"batch_size": 2, "iterations_per_epoch": 3,
                                          "network": {"deep_supervision": True}})  # fmt: skip
    fit(recipe, manifest, tmp_path / "run")
    predictor = Predictor.from_run(tmp_path / "run")
    plan = predictor.preprocess
    assert plan.network.deep_supervision
    network = predictor.task.network(ModelChoice(name="dynunet"), 1, plan).train()
    outputs = network(torch.zeros(1, 1, *plan.patch_size))
    assert outputs.shape[:3] == (1, min(3, len(plan.network.strides) - 2) + 1, 2)  # the heads, while training
    prediction = predictor.predict_files([data / "c6.nii.gz"], masks=tmp_path / "masks")
    (mask,) = (tmp_path / "masks").iterdir()
    from medsight.io import read

    assert read(mask).spatial_shape == (12, 24, 24) and prediction.scores.shape[0] == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["unet", "segresnet"])
def test_other_monai_networks_train_on_the_plan_and_predict(tmp_path, name):
    from medsight.engine.fit import fit
    from medsight.inference import Predictor

    data = tmp_path / "data"
    data.mkdir()
    manifest = _tiny_data(data)
    recipe = _recipe(tmp_path, overrides={"batch_size": 2, "iterations_per_epoch": 3, "patch_size": [8, 16, 16]})
    recipe = recipe.model_copy(update={"model": recipe.model.model_copy(update={"name": name})})
    fit(recipe, manifest, tmp_path / "run")
    predictor = Predictor.from_run(tmp_path / "run")
    assert (
        predictor.package.model.name == name
        and type(predictor.task.network(predictor.package.model, 1, predictor.preprocess)).__name__
        == {"unet": "UNet", "segresnet": "SegResNet"}[name]
    )
    predictor.predict_files([data / "c6.nii.gz"], masks=tmp_path / "masks")
    assert len(list((tmp_path / "masks").iterdir())) == 1


def test_a_network_the_plan_cannot_shape_is_refused_with_the_fix():
    from medsight.models import ModelChoice
    from medsight.planning import NetworkPlan, Plan

    task = task_for({"kind": "segmentation", "labels": {"lesion": 1}})
    network = NetworkPlan(
        filters=[8, 16, 32, 64], kernels=[(1, 3, 3)] * 4, strides=[(1, 1, 1), (1, 2, 2), (1, 2, 2), (2, 2, 2)]
    )
    plan = Plan.model_construct(network=network, patch_size=(12, 64, 64))
    with pytest.raises(ConfigError, match=r"patch \[12, 64, 64\] is not a multiple of 8 .*use dynunet"):
        task.network(ModelChoice(name="segresnet"), 1, plan)
    with pytest.raises(ConfigError, match=r"set model\.name to dynunet"):
        task.network(ModelChoice(name="resnet18"), 1, plan)
    deep = Plan.model_construct(network=network.model_copy(update={"deep_supervision": True}), patch_size=(12, 64, 64))
    with pytest.raises(ConfigError, match="deep supervision is built for dynunet"):
        task.network(ModelChoice(name="unet"), 1, deep)


@pytest.mark.slow
def test_prediction_precision_follows_the_run_and_the_cpu(tmp_path, monkeypatch):
    """auto: bf16 for a 3D model trained in bf16 on a CPU that runs it natively, else fp32;
    bf16 asked for where the CPU would emulate it is refused; outputs stay float32."""
    import medsight.inference.predictor as predictor_module
    from medsight.core.hardware import native_bf16
    from medsight.engine.fit import fit
    from medsight.inference import Predictor

    data = tmp_path / "data"
    data.mkdir()
    manifest = _tiny_data(data)
    fit(_recipe(tmp_path), manifest, tmp_path / "fp32")  # the recipe trains in fp32
    assert Predictor.from_run(tmp_path / "fp32").precision == "fp32"
    monkeypatch.setattr(predictor_module, "native_bf16", lambda: False)
    with pytest.raises(ConfigError, match="emulates bf16"):
        Predictor.from_run(tmp_path / "fp32", precision="bf16")
    with pytest.raises(ConfigError, match="precision must be auto, fp32 or bf16"):
        Predictor.from_run(tmp_path / "fp32", precision="half")
    monkeypatch.undo()
    if not native_bf16():
        pytest.skip("this CPU emulates bf16; the bf16 path is not exercised")
    recipe = _recipe(tmp_path)
    fit(recipe.model_copy(update={"train": recipe.train.model_copy(update={"precision": "bf16"})}), manifest,
        tmp_path / "bf16")  # fmt: skip
    fast, exact = Predictor.from_run(tmp_path / "bf16"), Predictor.from_run(tmp_path / "bf16", precision="fp32")
    assert (fast.precision, exact.precision) == ("bf16", "fp32")
    image = read_image(data / "c7.nii.gz")
    scores_fast, maps_fast = fast.predict_volumes([image])
    scores_exact, _ = exact.predict_volumes([image])
    assert maps_fast[0].array.dtype == np.uint8
    assert scores_fast["volume_ml_lesion"][0] == pytest.approx(scores_exact["volume_ml_lesion"][0], rel=0.05, abs=0.2)


def read_image(path):
    from medsight.io import read

    return read(path)


def test_ignored_voxels_count_in_no_loss_and_no_dice():
    """Voxels of the ignore label (index 255 in the cache) change neither the loss nor the Dice,
    whatever the network says there; labels and regions alike."""
    from medsight.transforms.volume3d import IGNORE_INDEX

    rng = np.random.default_rng(2)
    for spec, classes in (({"kind": "segmentation", "labels": {"a": 1, "b": 2}, "ignore": 9}, 3),
                          ({**BRATS, "ignore": 9}, 4)):  # fmt: skip
        task = task_for(spec)
        targets = torch.from_numpy(rng.integers(0, classes, size=(2, 6, 8, 8)).astype(np.uint8))
        targets[0, :3] = IGNORE_INDEX
        outputs = torch.from_numpy(rng.normal(0, 3, size=(2, task.out_channels, 6, 8, 8)).astype(np.float32))
        other = outputs.clone()
        other[0, :, :3] = torch.from_numpy(rng.normal(0, 9, size=other[0, :, :3].shape).astype(np.float32))
        assert float(task.loss(other, targets)) == pytest.approx(float(task.loss(outputs, targets)), rel=1e-5)
        assert task.score(other, targets) == pytest.approx(task.score(outputs, targets), nan_ok=True)
        assert float(task.loss(outputs, torch.full_like(targets, IGNORE_INDEX))) == pytest.approx(0.0, abs=1e-4)
    plain = task_for({"kind": "segmentation", "labels": {"a": 1, "b": 2}})
    labels = torch.from_numpy(rng.integers(0, 3, size=(2, 6, 8, 8)).astype(np.uint8))
    logits = torch.from_numpy(rng.normal(0, 3, size=(2, 3, 6, 8, 8)).astype(np.float32))
    ignoring = task_for({"kind": "segmentation", "labels": {"a": 1, "b": 2}, "ignore": 9})
    assert float(ignoring.loss(logits, labels)) == pytest.approx(float(plain.loss(logits, labels)), rel=1e-6)
    # against a reference that drops the ignored voxels: one patch half ignored = the other half alone
    half = labels.clone()
    half[:, :3] = IGNORE_INDEX
    assert ignoring.score(logits, half)["dice_a"] == pytest.approx(
        plain.score(logits[:, :, 3:], labels[:, 3:])["dice_a"]
    )
    assert float(ignoring.loss(logits, half)) == pytest.approx(float(plain.loss(logits[:, :, 3:], labels[:, 3:])))


def test_the_ignore_code_is_cached_as_its_index_and_never_a_patch_centre(tmp_path):
    from medsight.data.volume_cache import IGNORE_INDEX, build_volume_cache
    from medsight.io import read
    from medsight.planning.fingerprint import case_facts

    data = tmp_path / "data"
    data.mkdir()
    manifest = _unsure_data(data, 2)
    task = task_for({"kind": "segmentation", "labels": {"lesion": 1}, "ignore": 9})
    plan = task.plan_for(manifest, _recipe(tmp_path).preprocess)
    cache = build_volume_cache(manifest, plan, [1], tmp_path / "cache", ignore=9)
    for n, item in enumerate(cache.items):
        label = np.asarray(cache.label(n))
        assert set(np.unique(label)) == {0, 1, IGNORE_INDEX}
        assert set(item.locations) == {1} and all(label[tuple(v)] == 1 for v in item.locations[1])
    with pytest.raises(InputError, match=r"holds \[9\], not among the task's label codes \[1\]"):
        build_volume_cache(manifest, plan, [1], tmp_path / "other")  # not declared: refused as before
    facts = case_facts(read(data / "c0.nii.gz"), read(data / "c0_seg.nii.gz"), ignore=9)
    assert set(facts.label_volumes) == {1} and len(facts.foreground_components) == 1


def test_the_volume_cache_made_in_worker_processes_is_the_one_made_in_process(tmp_path, monkeypatch):
    """Volumes are preprocessed in forked workers; the foreground samples patches are centred on
    are drawn in the parent, in order, so the cache (and training) does not depend on the workers.
    A case that cannot be read stops the build with its name, and leaves no cache."""
    import threading

    from medsight.data import volume_cache
    from medsight.data.volume_cache import build_volume_cache

    data = tmp_path / "data"
    data.mkdir()
    manifest = _unsure_data(data, 4)
    task = task_for({"kind": "segmentation", "labels": {"lesion": 1, "unsure": 9}})
    plan = task.plan_for(manifest, _recipe(tmp_path).preprocess)
    made = {}
    for workers in (1, 2):
        monkeypatch.setattr(volume_cache, "default_workers", lambda w=workers: w)
        made[workers] = build_volume_cache(manifest, plan, [1, 9], tmp_path / f"cache{workers}")
    assert threading.active_count() == 1  # so the two-worker build did fork
    one, two = made[1], made[2]
    assert [i.case_id for i in one.items] == [i.case_id for i in two.items] == [f"c{i}" for i in range(4)]
    for n, (a, b) in enumerate(zip(one.items, two.items, strict=True)):
        assert (a.spacing, a.shape, a.box, a.source_shape) == (b.spacing, b.shape, b.box, b.source_shape)
        np.testing.assert_array_equal(np.asarray(one.image(n)), np.asarray(two.image(n)))
        np.testing.assert_array_equal(np.asarray(one.label(n)), np.asarray(two.label(n)))
        assert a.locations.keys() == b.locations.keys()
        for c in a.locations:
            np.testing.assert_array_equal(a.locations[c], b.locations[c])
    (data / "c2_seg.nii.gz").write_bytes(b"not a NIfTI file")
    with pytest.raises(InputError, match="case c2: cannot preprocess"):
        build_volume_cache(manifest, plan, [1, 9], tmp_path / "broken")
    assert not (tmp_path / "broken").exists()
    from medsight.data.cases import fingerprint_manifest  # fingerprinted in workers too

    with pytest.raises(InputError, match="cannot fingerprint case c2"):
        fingerprint_manifest(manifest)


def test_evaluation_leaves_the_references_ignored_voxels_out():
    task = task_for({"kind": "segmentation", "labels": {"lesion": 1}, "ignore": 9})
    truth = np.zeros((6, 10, 10), np.int64)
    truth[2:4, 2:6, 2:6] = 1
    truth[:, 7:, 7:] = 9  # unsure there
    predicted = np.zeros_like(truth, dtype=np.uint8)
    predicted[2:4, 2:6, 2:6] = 1
    predicted[:, 8:, 8:] = 1  # says lesion where the reference is unsure
    figures = task._case_metrics(task._unignored(predicted, truth), truth, (1.0, 1.0, 1.0))
    assert figures["dice_lesion"] == 1.0 and figures["volume_error_ml_lesion"] == 0.0
    plain = task_for({"kind": "segmentation", "labels": {"lesion": 1}})
    assert plain._case_metrics(plain._unignored(predicted, truth), truth, (1.0, 1.0, 1.0))["dice_lesion"] < 0.9


def test_a_run_keeps_reading_its_cache_while_another_run_rebuilds_the_folder(tmp_path):
    """Two runs on the same folder with other labels (here: an ignore code) share the cache folder;
    the second rebuilds it. The first, still training, must go on reading what it opened."""
    from medsight.data.volume_cache import IGNORE_INDEX, build_volume_cache

    data = tmp_path / "data"
    data.mkdir()
    manifest = _unsure_data(data, 3)
    task = task_for({"kind": "segmentation", "labels": {"lesion": 1, "unsure": 9}})
    plan = task.plan_for(manifest, _recipe(tmp_path).preprocess)
    first = build_volume_cache(manifest, plan, [1, 9], tmp_path / "cache")
    copy = build_volume_cache(manifest, plan, [1, 9], tmp_path / "copy")  # what the first holds, elsewhere
    expected = [np.array(copy.label(n)) for n in range(3)]
    assert all(set(np.unique(e)) == {0, 1, 2} for e in expected)
    other = build_volume_cache(manifest, plan, [1], tmp_path / "cache", ignore=9)  # same folder, rebuilt
    assert all(IGNORE_INDEX in np.asarray(other.label(n)) for n in range(3))
    for n in range(3):  # none was read before the rebuild: all still the first run's
        np.testing.assert_array_equal(np.asarray(first.label(n)), expected[n])


def test_a_task_that_ignores_a_code_keeps_its_own_cache(tmp_path):
    """A run that ignores a code and one that learns it, on the same data and plan, each keep their
    cache: neither rebuilds the other's when it starts again."""
    data = tmp_path / "data"
    data.mkdir()
    manifest = _unsure_data(data, 2)
    learning = task_for({"kind": "segmentation", "labels": {"lesion": 1, "unsure": 9}})
    ignoring = task_for({"kind": "segmentation", "labels": {"lesion": 1}, "ignore": 9})
    plan = learning.plan_for(manifest, _recipe(tmp_path).preprocess)
    first = learning.prepare(manifest, plan, tmp_path / "cache", progress=None).inputs
    second = ignoring.prepare(manifest, plan, tmp_path / "cache", progress=None).inputs
    assert first.folder != second.folder and first.folder.is_dir() and second.folder.is_dir()
    built = (first.folder / "index.json").stat().st_mtime_ns
    again = learning.prepare(manifest, plan, tmp_path / "cache", progress=None).inputs
    assert again.folder == first.folder and (first.folder / "index.json").stat().st_mtime_ns == built  # reused
