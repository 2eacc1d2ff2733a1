"""The structured configs: one source of defaults and choices, and the YAML files build on them."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from lungnet.config_checks import check_ranges, describe
from lungnet.data.datamodule import LungDataModule
from lungnet.errors import ConfigError
from lungnet.models.specs import ModelSpec
from lungnet.schema import (
    MAX_IMAGE_SIZE,
    SCHEMAS,
    AppConfig,
    DataConfig,
    ExplainMethod,
    Int8Weights,
    LoadConfig,
    ModelConfig,
    PredictConfig,
    Score,
    TrainConfig,
    data_defaults,
)
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


COMMANDS = sorted(p.stem for p in CONF.glob("*.yaml"))


def test_every_command_has_a_schema_listed_first():
    assert set(COMMANDS) == set(SCHEMAS)
    for name in COMMANDS:
        defaults = yaml.safe_load((CONF / f"{name}.yaml").read_text())["defaults"]
        assert defaults[0] == f"{name}_schema", name


@pytest.mark.parametrize("name", COMMANDS)
def test_command_files_state_no_default_of_their_schema(name):
    """A command's YAML names only what the command line must give (``???``): every value is its schema's."""
    values = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    fields = {f.name for f in dataclasses.fields(SCHEMAS[name])}
    stated = {k: v for k, v in values.items() if k in fields and v != "???"}
    assert not stated, f"conf/{name}.yaml states {stated}: the defaults live in {SCHEMAS[name].__name__}"


@pytest.mark.parametrize(
    ("name", "overrides", "shown"),
    [
        ("app", ["ckpt=x", "port=8123"], {"port": 8123, "host": "127.0.0.1", "max_queue": 8, "log_level": "info"}),
        ("app", ["ckpt=x", "~explain"], {"explain": None, "device": "cpu", "trust_export": False}),
        ("export", ["ckpt=x", "opset=13"], {"opset": 13, "format": "onnx", "int8_weights": "reduced"}),
        ("explain", ["ckpt=x", "method=ig", "options.n_steps=8"], {"method": "ig", "n": 16, "score": "none"}),
        ("crossval", ["runs=r", "resamples=20"], {"resamples": 20, "seed": 0, "baseline": None, "out": None}),
    ],
)
def test_new_schemas_compose_with_their_defaults(name, overrides, shown):
    cfg = compose_cfg(name, overrides)
    values = OmegaConf.to_container(cfg, enum_to_str=True)
    assert {k: values[k] for k in shown} == shown
    assert OmegaConf.get_type(cfg) is SCHEMAS[name]


def test_explain_scores_every_method_and_reads_the_shared_paths():
    cfg = compose_cfg("explain", ["ckpt=x"])
    assert list(cfg.methods) == ExplainMethod.values() and cfg.options.n_steps is None
    assert cfg.paths.log_dir and str(cfg.out).startswith(cfg.paths.log_dir + "/explain/")


@pytest.mark.parametrize(
    ("name", "overrides", "key"),
    [
        ("app", ["ckpt=x", "port=abc"], "port"),
        ("app", ["ckpt=x", "log_level=loud"], "log_level"),
        ("export", ["ckpt=x", "opset=x"], "opset"),
        ("export", ["ckpt=x", "int8_weights=int4"], "int8_weights"),
        ("export", ["ckpt=x", "format=tflite"], "format"),
        ("explain", ["ckpt=x", "method=lime"], "method"),
        ("explain", ["ckpt=x", "score=maybe"], "score"),
        ("explain", ["ckpt=x", "options.n_steps=some"], "n_steps"),
        ("crossval", ["runs=r", "resamples=many"], "resamples"),
    ],
)
def test_wrong_types_and_choices_are_refused_while_composing(name, overrides, key):
    with pytest.raises(ConfigCompositionException, match=key) as exc:
        compose_cfg(name, overrides)
    assert isinstance(exc.value.__cause__, ValidationError)  # OmegaConf's, against the schema's type


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("app", ["ckpt=x", "port=70000"], r"port=70000 must be in \[1, 65535\]"),
        ("app", ["ckpt=x", "max_queue=0"], r"max_queue=0 must be a number >= 1"),
        ("app", ["ckpt=x", "max_upload_mb=0"], r"max_upload_mb=0.0 must be a number > 0"),
        ("app", ["ckpt=x", "threads=0"], r"threads=0 must be a number >= 1, or null"),
        ("export", ["ckpt=x", "min_agreement=2"], r"min_agreement=2.0 must be in \[0, 1\]"),
        ("export", ["ckpt=x", "calib_n=0"], r"calib_n=0 must be a number >= 1"),
        ("explain", ["ckpt=x", "alpha=2"], r"alpha=2.0 must be in \[0, 1\]"),
        ("explain", ["ckpt=x", "options.n_steps=0"], r"options.n_steps=0 must be a number >= 1, or null"),
        ("explain", ["ckpt=x", "n=0"], r"n=0 must be a number >= 1"),
        ("crossval", ["runs=r", "resamples=0"], r"resamples=0 must be a number >= 1"),
    ],
)
def test_new_schemas_ranges_are_checked(name, overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_ranges(compose_cfg(name, overrides), SCHEMAS[name])


def test_schema_choices_are_the_ones_the_code_accepts():
    from lungnet.explain.cams import list_methods
    from lungnet.explain.job import SCORES
    from lungnet.serve.export import INT8_WEIGHTS

    assert ExplainMethod.values() == list_methods()
    assert Score.values() == list(SCORES)
    assert Int8Weights.values() == list(INT8_WEIGHTS)


def test_predict_and_app_load_a_model_the_same_way():
    """One statement of the loading options' defaults (`LoadConfig`), for predict.py and the app."""
    shared = {f.name for f in dataclasses.fields(LoadConfig)}
    for schema in (PredictConfig, AppConfig):
        assert issubclass(schema, LoadConfig)
        own = {f.name: f.default for f in dataclasses.fields(schema) if f.name in shared}
        assert own == {f.name: f.default for f in dataclasses.fields(LoadConfig)}, schema.__name__
