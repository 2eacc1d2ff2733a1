"""Every config option and preset composes, and the presets say what the reference setups say."""

import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import CONF

GROUPS = {g: sorted(p.stem for p in (CONF / g).glob("*.yaml")) for g in ("data", "model", "trainer", "augment")}
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def _compose(overrides, name="train"):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize(("group", "option"), [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_group_options_compose(group, option):
    cfg = _compose([f"{group}={option}"])
    assert cfg[group] is not None


def test_expected_options_exist():
    assert set(GROUPS["data"]) >= {
        "synthetic",
        "pneumonia",
        "pneumoniamnist",
        "lung5",
        "cxr4",
        "darkcovidnet",
        "nih6",
        "nih14",
    }
    assert set(GROUPS["model"]) >= {
        "simple_cnn",
        "resnet18",
        "vgg16",
        "resnet50",
        "resnet152",
        "densenet121",
        "densenet201",
        "mobilenetv2",
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
    }
    assert set(GROUPS["trainer"]) >= {"cpu", "gpu", "ddp"}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiments_compose(name):
    cfg = _compose([f"experiment={name}"])
    assert cfg.data.name and cfg.model.name


def test_reference_presets():
    c = _compose(["experiment=lung5_transfer"])
    assert c.data.name == "lung5" and c.data.image_size == 224 and c.augment.name == "xray"
    assert c.hydra.sweeper.params.model == "vgg16,resnet152,densenet201"
    c = _compose(["experiment=pneumonia_baselines"])
    assert c.data.image_size == 150 and c.optimizer._target_ == "torch.optim.Adam" and c.trainer.max_epochs == 10
    c = _compose(["experiment=pneumonia_mobilenetv2_224"])
    assert c.model.head_hidden == 128 and c.model.drop_rate == 0.3 and c.optimizer.lr == 1e-4
    assert c.early_stopping.patience > 0
    c = _compose(["experiment=cxr4_cnn"])
    assert c.data.test_fraction == 0.2 and c.trainer.max_epochs == 30 and c.early_stopping.patience > 0
    c = _compose(["experiment=nih6_resnet50"])
    assert c.model.name == "resnet50" and c.model.in_chans == 1 and c.data.balance == "loss"


def test_evaluate_config_composes():
    cfg = _compose(["ckpt=x.ckpt", "data.root=/tmp"], name="evaluate")
    assert cfg.split == "test" and cfg.data.root == "/tmp"


@pytest.mark.parametrize(("launcher", "target"), [("local", "JoblibLauncher"), ("slurm", "SlurmLauncher")])
def test_sweep_launchers_compose(launcher, target):
    cfg = _compose([f"hydra/launcher={launcher}"])
    assert cfg.hydra.launcher._target_.endswith(target)


NEW_GROUPS = {g: sorted(p.stem for p in (CONF / g).glob("*.yaml")) for g in ("optimizer", "scheduler", "callbacks")}
NEW_GROUPS.update(logger=sorted(p.stem for p in (CONF / "logger").glob("*.yaml")), debug=["fdr", "limit", "overfit"])


@pytest.mark.parametrize(("group", "option"), [(g, o) for g, opts in NEW_GROUPS.items() for o in opts])
def test_template_groups_compose(group, option):
    cfg = _compose([f"{group}={option}"])
    assert group in cfg or group == "debug"


def test_callbacks_are_switchable_by_key_and_off_by_their_setting(tmp_path):
    from lungnet.config_checks import pin_paths
    from lungnet.train.callbacks import FreezeUnfreeze
    from lungnet.train.training import build_callbacks

    def callbacks(overrides, has_val=True):
        cfg = _compose(overrides)
        pin_paths(cfg, tmp_path)  # what train does: paths.output_dir is the run directory
        return build_callbacks(cfg, has_val)

    def names(overrides, has_val=True):
        return sorted(type(c).__name__ for c in callbacks(overrides, has_val))

    default = names([])
    assert default == ["AtomicCheckpoint", "EpochSeeder", "FigureLogger", "LearningRateMonitor", "StopOnDivergence"]
    assert "StopOnDivergence" not in names(["callbacks.divergence=null"])
    assert "EarlyStopping" in names(["early_stopping.patience=3"])
    assert "EarlyStopping" in names(["callbacks.early_stopping.patience=3"])  # the template's way works too
    assert "EarlyStopping" not in names(["early_stopping.patience=3", "callbacks.early_stopping=null"])
    assert "EarlyStopping" not in names(["early_stopping.patience=3"], has_val=False)
    assert "LearningRateMonitor" not in names(["callbacks.lr_monitor=null"])
    assert names(["callbacks=none"]) == []
    unfreeze = [c for c in callbacks(["experiment=darkcovidnet_best"]) if isinstance(c, FreezeUnfreeze)]
    assert unfreeze[0].unfreeze_at_epoch == 1 and unfreeze[0].unfreeze_lr_mult == 0.3
    assert "WeightEMA" in names(["ema.decay=0.9"])
    checkpoint = callbacks([])[0]
    assert checkpoint.dirpath == str(tmp_path / "checkpoints") and checkpoint.monitor == "val/auroc"
    assert callbacks([], has_val=False)[0].monitor == "train/loss_epoch"


def test_any_torch_optimizer_by_target():
    import torch
    from omegaconf import OmegaConf

    from lungnet.train.module import LitClassifier

    cfg = _compose(["optimizer._target_=torch.optim.RAdam", "scheduler=none", "warmup_epochs=2"])
    module = LitClassifier(
        {"name": "simple_cnn", "in_chans": 1},
        ["a", "b"],
        optimizer=OmegaConf.to_container(cfg.optimizer),
        scheduler=OmegaConf.to_container(cfg.scheduler),
        warmup_epochs=2,
    )
    out = module.configure_optimizers()
    assert isinstance(out["optimizer"], torch.optim.RAdam) and out["optimizer"].defaults["weight_decay"] == 1e-4
    assert isinstance(out["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.LinearLR)  # the warm-up alone


def test_debug_fdr_runs_one_batch_and_writes_no_checkpoint(tmp_path):
    from lungnet.train.training import train
    from tests.conftest import TINY, compose_cfg

    data = ["data.options.n_per_class=4", "data.options.size=32", f"data.root={tmp_path / 'syn'}"]
    cfg = compose_cfg("train", [*data, *TINY, "debug=fdr"])
    assert cfg.trainer.fast_dev_run is True and cfg.trainer.detect_anomaly is True and cfg.data.num_workers == 0
    assert train(cfg, tmp_path / "run") == {}
    assert (tmp_path / "run" / "splits" / "train.csv").is_file() and not (tmp_path / "run" / "metrics.json").exists()
    assert not list((tmp_path / "run").glob("checkpoints/*.ckpt"))


@pytest.mark.parametrize("package", ["hydra-core", "omegaconf"])
def test_config_stack_is_a_stable_release(package):
    """hydra-optuna-sweeper names a hydra-core dev release in its requirements, which lets pip take pre-releases
    (1.4.0rc3 with omegaconf 2.4.1rc1: other messages, other behaviour); pyproject.toml keeps them on 1.3 / 2.3."""
    from importlib.metadata import version

    from packaging.version import Version

    installed = Version(version(package))
    assert not installed.is_prerelease, f"{package} {installed} is a pre-release: reinstall with pyproject's pins"
    assert (installed.major, installed.minor) == {"hydra-core": (1, 3), "omegaconf": (2, 3)}[package]
