"""The structured configs: one source of defaults and choices, and the YAML files build on them."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from omegaconf import OmegaConf

from lungnet.config_checks import check_ranges, describe
from lungnet.data.datamodule import LungDataModule
from lungnet.errors import ConfigError
from lungnet.models.specs import ModelSpec
from lungnet.schema import MAX_IMAGE_SIZE, DataConfig, ModelConfig, TrainConfig, data_defaults
from tests.conftest import CONF, compose_cfg


@pytest.mark.parametrize(("group", "schema"), [("data", DataConfig), ("model", ModelConfig)])
def test_group_files_state_only_what_differs_from_the_schema(group, schema):
    defaults = {f.name: f.default for f in dataclasses.fields(schema) if f.default is not dataclasses.MISSING}
    for path in sorted((CONF / group).glob("*.yaml")):
        values = yaml.safe_load(path.read_text())
        assert values["defaults"] == ["_base", "_self_"], path
        same = [k for k, v in values.items() if k in defaults and v == defaults[k] and k != "defaults"]
        assert not same, f"{path.name} repeats the schema's defaults for {same}"


def test_old_checkpoint_data_config_gets_the_schema_defaults():
    old = {"name": "pneumonia", "source": "pneumonia", "root": "/nowhere", "image_size": 32, "batch_size": 8}
    dm = LungDataModule(old, ModelSpec(name="simple_cnn", arch="simple_cnn", input_size=64, in_chans=1))
    assert dm.cfg["downsample_to"] is None and dm.cfg["near_duplicates"] is False and dm.cfg["cv_folds"] == 0
    assert dm.cfg["cache_dir"].endswith("lungnet/images") and "${" not in dm.cfg["cache_dir"]
    assert set(data_defaults()) <= set(dm.cfg) and dm.image_size == 32


def test_image_size_zero_is_refused_not_replaced_by_the_model_default():
    cfg = compose_cfg("train", ["data.image_size=0"])
    with pytest.raises(ConfigError, match=r"data.image_size=0 must be in \[8, 4096\], or null \(input size"):
        check_ranges(cfg, TrainConfig)
    dm = LungDataModule(
        {**OmegaConf.to_container(cfg.data), "image_size": None, "root": "/x"},
        ModelSpec(name="m", arch="m", input_size=64),
    )
    assert dm.image_size == 64  # null: the model's default


@pytest.mark.parametrize("key", ["data.image_size", "data.downsample_to"])
def test_image_sizes_have_one_stated_maximum(key):
    """The command line and a checkpoint's stored config share one limit, lungnet.schema.MAX_IMAGE_SIZE."""
    with pytest.raises(ConfigError, match=rf"{key}=60000 must be in \[8, {MAX_IMAGE_SIZE}\]"):
        check_ranges(compose_cfg("train", [f"{key}=60000"]), TrainConfig)


def test_describe_names_choices_ranges_and_nulls():
    assert describe(TrainConfig, "data.balance").startswith("one of: none, loss, sampler")
    assert describe(TrainConfig, "data.val_fraction").startswith("a number in [0, 1)")
    assert describe(TrainConfig, "model.in_chans").startswith("one of: 1, 3")
    assert describe(TrainConfig, "ema.decay") == "a number in [0, 1) (0: off)"
    assert describe(TrainConfig, "data.nope") == ""


def test_no_python_default_tables_remain():
    import lungnet.data.datamodule as datamodule
    import lungnet.evaluation.pipeline as run
    import lungnet.train.module as module
    import lungnet.train.training as training

    assert not hasattr(module, "OPTIM_DEFAULTS") and not hasattr(datamodule, "DEFAULTS")
    assert not hasattr(run, "DEFAULTS") and not hasattr(training, "CHOICES")
