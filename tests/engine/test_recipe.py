from __future__ import annotations

import pytest

from medsight.core import ConfigError
from medsight.engine.recipe import builtin_recipes, load_recipe
from medsight.tasks import task_for


@pytest.mark.parametrize("name", sorted(builtin_recipes()))
def test_every_builtin_recipe_validates(name):
    recipe = load_recipe(name)
    assert recipe.name == name
    assert recipe.train.epochs >= 1
    what = {"segmentation": "labels", "detection": "finding", "risk": "features"}.get(recipe.task.kind, "classes")
    assert getattr(recipe.task, what)
    assert isinstance(recipe.preprocess, type(task_for(recipe.task)).preprocess_type)


def test_a_typo_in_the_task_specific_preprocess_section_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown key 'preprocess.sise' \(did you mean 'size'\?\)"):
        load_recipe("dr-grading", ["preprocess.sise=64"])
    with pytest.raises(ConfigError, match=r"unknown key 'preprocess.memory_gp' \(did you mean 'memory_gb'\?\)"):
        load_recipe("brain-tumor-seg", ["preprocess.memory_gp=4"])


def test_overrides_are_parsed_as_yaml():
    recipe = load_recipe("dr-grading", ["train.epochs=2", "model.name=densenet121", "task.classes=[a, b, c]"])
    assert recipe.train.epochs == 2 and recipe.model.name == "densenet121" and recipe.task.classes == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.epoch=2"], r"unknown key 'train.epoch' \(did you mean 'epochs'\?\)"),
        (["modle.name=x"], r"unknown key 'modle' \(did you mean 'model'\?\)"),
        (["train.lr=-1"], "train.lr: Input should be greater than 0"),
        (["train.epochs"], "KEY=VALUE"),
        (["name.x=1"], "is a value, not a section"),
    ],
)
def test_bad_recipes_say_what_and_how(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe("dr-grading", overrides)


def test_a_task_wide_rule_is_named_under_task_not_its_kind():
    """A rule over several task keys is reported at ``task``, not at the union's tag."""
    with pytest.raises(ConfigError, match=r"invalid recipe lung-nodule-det.yaml: task: proposals \(50\) must be"):
        load_recipe("lung-nodule-det", ["task.proposals=50"])


def test_recipe_files_and_unknown_names(tmp_path):
    (tmp_path / "mine.yaml").write_text("name: mine\ntask: {kind: binary, classes: [negative, positive]}\n")
    assert load_recipe(tmp_path / "mine.yaml").task.kind == "binary"
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="not a built-in"):
        load_recipe("dr_grading")


@pytest.mark.parametrize(("override", "message"), [
    ("task.referable_grade=7", r"grades 1..4, got 7"),
    ("task.referable_grade=0", r"grades 1..4, got 0"),
    ("task.referable_grade=-1", r"grades 1..4, got -1"),
])  # fmt: skip
def test_referable_grade_must_be_a_grade_of_the_task(override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe("dr-grading", [override])
    with pytest.raises(ConfigError, match="applies to ordinal tasks, not multilabel"):
        load_recipe("cxr-findings", ["task.referable_grade=1"])


def test_on_and_off_read_by_yaml_as_booleans_still_mean_on_and_off():
    assert load_recipe("dr-grading", ["train.channels_last=off"]).train.channels_last == "off"
    assert load_recipe("dr-grading", ["train.channels_last=on"]).train.channels_last == "on"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [(["train.momentum=0.99"], "train.momentum applies to optimizer sgd; this recipe uses adamw"),
     (["train.nesterov=true"], "train.nesterov applies to optimizer sgd"),
     (["train.optimizer=sgd", "train.momentum=0", "train.nesterov=true"], "nesterov needs train.momentum above 0"),
     (["train.optimizer=sgd", "train.momentum=1.0"], "momentum")],
)  # fmt: skip
def test_sgd_settings_given_to_another_optimizer_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe("dr-grading", overrides)


def test_the_sgd_momentum_reaches_the_optimizer(monkeypatch, tmp_path):
    import torch

    from medsight.engine import loop

    made = []

    def spy(*args, **kwargs):
        made.append(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(torch.optim, "SGD", spy)
    recipe = load_recipe("brain-tumor-seg")
    assert recipe.train.momentum == 0.99 and recipe.train.nesterov  # nnU-Net's SGD
    model = torch.nn.Conv3d(1, 1, 1)
    data = torch.utils.data.TensorDataset(torch.zeros(2, 1, 2, 2, 2), torch.zeros(2, 1, 2, 2, 2))
    config = recipe.train.model_copy(update={"epochs": 1, "batch_size": 2, "precision": "fp32", "channels_last": "off"})
    with pytest.raises(RuntimeError, match="stop here"):
        loop.train(model, torch.nn.functional.mse_loss, data, config=config, run_dir=tmp_path / "run")
    assert made and made[0]["momentum"] == 0.99 and made[0]["nesterov"] is True
