"""Bad configuration: one clear message, exit status 2, and no half-written run directory."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from hydra.errors import HydraException, MissingConfigException
from omegaconf.errors import OmegaConfBaseException

from lungnet.commands.launch import config_error_line
from lungnet.commands.wrapper import run_safely
from lungnet.evaluation.pipeline import evaluate
from lungnet.train.training import train
from tests.conftest import TINY as BASE_TINY
from tests.conftest import compose_cfg, make_class_folders, run_script, shared, write_png

TINY = [*BASE_TINY, "log_figures_every=100"]


def _fails(fn, cfg, run, caplog) -> str:
    """Runs ``fn`` as the entry points do; asserts exit status 2 and returns the logged message."""
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="lungnet"), pytest.raises(SystemExit) as info:
        run_safely(fn, cfg, run)
    assert info.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    return errors[0]


def _nothing_written(run) -> None:
    assert not run.exists() or not [p for p in run.rglob("*") if p.is_file()], list(run.rglob("*"))


def _refusal(overrides: list[str], run, caplog) -> str:
    """The one line a bad setting gets, wherever it is caught.

    Hydra refuses values the schema does not accept while composing: `lungnet.commands.launch` prints that as one line
    and
    exits 2 (`test_launch` runs the scripts); the rest `train` refuses before writing (exit 2 through run_safely).
    """
    try:
        cfg = compose_cfg("train", overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        return config_error_line(exc)
    return _fails(train, cfg, run, caplog)


@pytest.fixture(scope="module")
def pneumonia_ckpt(tmp_path_factory):
    """A one-epoch checkpoint trained on a tiny two-class pneumonia folder."""
    tmp = tmp_path_factory.mktemp("ckpt")
    data = make_class_folders(tmp / "pneu", ["NORMAL", "PNEUMONIA"], 6, ["train", "val", "test"])
    train(compose_cfg("train", ["data=pneumonia", f"data.root={data}", *TINY]), tmp / "run")
    return tmp / "run" / "checkpoints" / "best.ckpt", data


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.name=resnet9000"], ["Unknown model 'resnet9000'", "simple_cnn", "timm"]),
        (["data.source=mnist"], ["Unknown dataset source 'mnist'", "darkcovidnet"]),
        (["optimizer=adamx"], ["optimizer=adamx is not an option", "adamw"]),
        (["optim.name=adamw"], ["optim.name no longer exists: use optimizer=adamw"]),
        (["checkpoint.monitor=val/nope"], ["checkpoint.monitor='val/nope' is not logged", "val/auroc"]),
        (["checkpoint.select=median"], ["checkpoint.select='median' is not valid", "one of: best, last"]),
        (["checkpoint.select=last", "early_stopping.patience=2"], ["set early_stopping.patience=0"]),
        (["+trainer.not_an_arg=1"], ["Unknown trainer argument(s) ['not_an_arg']"]),
        (["data.downsample_to=4"], ["data.downsample_to=4 must be in [8, 4096]"]),
        (["ema.decay=1.0"], ["ema.decay=1.0 must be in [0, 1) (0: off)"]),
        (["data.balance=maybe"], ["data.balance='maybe' is not valid", "sampler"]),
        (["+callbacks.x._target_=no.such.Callback"], ["no.such.Callback"]),
    ],
)
def test_invalid_options(tmp_path, caplog, overrides, expected):
    data = make_class_folders(tmp_path / "pneu", ["NORMAL", "PNEUMONIA"], 2, ["train", "test"])
    run = tmp_path / "run"
    message = _refusal(["data=pneumonia", f"data.root={data}", *TINY, *overrides], run, caplog)
    for text in expected:
        assert text in message, message
    _nothing_written(run)


def test_unknown_dataset_config_lists_valid_ones():
    with pytest.raises(MissingConfigException) as info:
        compose_cfg("train", ["data=mnist"])
    assert "darkcovidnet" in str(info.value.options)  # Hydra prints "Available options in 'data'" from these


def test_data_folder_mistakes(tmp_path, caplog):
    run = tmp_path / "run"
    base = ["data=pneumonia", *TINY]
    message = _fails(train, compose_cfg("train", [*base, f"data.root={tmp_path / 'nowhere'}"]), run, caplog)
    assert "Data root for dataset 'pneumonia' not found" in message and "nowhere" in message
    empty = tmp_path / "empty"
    (empty / "NORMAL").mkdir(parents=True)
    write_png(empty / "PNEUMONIA" / "a.png", 1)
    message = _fails(train, compose_cfg("train", [*base, f"data.root={empty}"]), run, caplog)
    assert "is empty" in message and "NORMAL" in message
    differ = make_class_folders(tmp_path / "differ", ["NORMAL", "PNEUMONIA"], 2, ["train"])
    make_class_folders(differ, ["NORMAL"], 2, ["test"])
    message = _fails(train, compose_cfg("train", [*base, f"data.root={differ}"]), run, caplog)
    assert "Classes differ between splits" in message
    _nothing_written(run)


def test_data_that_would_silently_train_wrong_stops(tmp_path, caplog):
    """A class with one image, and a symlink that gives images another label: exit 2, nothing written."""
    run = tmp_path / "run"
    dark = make_class_folders(tmp_path / "dark", ["No_findings", "Pneumonia"], 6)
    write_png(dark / "Covid-19" / "only.png", 99)  # the single image would end up in val, none in train
    message = _fails(train, compose_cfg("train", ["data=darkcovidnet", f"data.root={dark}", *TINY]), run, caplog)
    assert "'Covid-19' has 1 usable image(s)" in message and "Add images" in message
    _nothing_written(run)
    pneu = make_class_folders(tmp_path / "pneu", ["NORMAL", "PNEUMONIA"], 6, ["train", "val"])
    os.symlink("../../val", pneu / "train" / "NORMAL" / "valagain")
    message = _fails(train, compose_cfg("train", ["data=pneumonia", f"data.root={pneu}", *TINY]), run, caplog)
    assert str(pneu / "train" / "NORMAL" / "valagain" / "PNEUMONIA" / "img_000.png") in message
    assert str(pneu / "val" / "PNEUMONIA" / "img_000.png") in message
    _nothing_written(run)


def test_checkpoint_from_another_dataset(pneumonia_ckpt, tmp_path, caplog):
    ckpt, _ = pneumonia_ckpt
    other = make_class_folders(tmp_path / "dcn", ["Covid-19", "No_findings", "Pneumonia"], 3)
    run = tmp_path / "run"
    cfg = compose_cfg("train", ["data=darkcovidnet", f"data.root={other}", *TINY, f"resume={ckpt}"])
    message = _fails(train, cfg, run, caplog)
    assert "Cannot resume" in message and "labels" in message and "dataset" in message
    _nothing_written(run)
    message = _fails(
        evaluate, compose_cfg("evaluate", [f"ckpt={ckpt}", f"data.root={other}"]), tmp_path / "eval", caplog
    )
    assert "does not match any label" in message and "Covid-19" in message
    _nothing_written(tmp_path / "eval")


def test_head_size_mismatch(pneumonia_ckpt, tmp_path, caplog):
    ckpt, data = pneumonia_ckpt
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    state["hyper_parameters"]["labels"] = ["NORMAL", "PNEUMONIA", "EXTRA"]  # head still has 2 outputs
    bad = tmp_path / "three_labels.ckpt"
    torch.save(state, bad)
    message = _fails(evaluate, compose_cfg("evaluate", [f"ckpt={bad}"]), tmp_path / "eval", caplog)
    needs = "with 3 labels needs head tensor head.1.weight of shape (3, *); the state dict's is of shape (2, "
    assert str(bad) in message and needs in message
    cfg = compose_cfg("train", ["data=pneumonia", f"data.root={data}", *TINY, f"resume={bad}"])
    message = _fails(train, cfg, tmp_path / "run", caplog)
    assert str(bad) in message and needs in message  # resume reads through the same checks
    _nothing_written(tmp_path / "run")


def test_evaluate_script_mismatch_exits_2_without_traceback(pneumonia_ckpt, tmp_path):
    ckpt, _ = pneumonia_ckpt
    other = make_class_folders(tmp_path / "dcn", ["Covid-19", "No_findings"], 2)
    args = [f"ckpt={ckpt}", f"data.root={other}", f"hydra.run.dir={tmp_path}/e"]
    proc = run_script("evaluate.py", args, tmp_path, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "does not match any label" in proc.stdout + proc.stderr
    assert not (tmp_path / "e").exists()  # refused: the run directory Hydra made for it is gone too


CUDA = torch.cuda.is_available()

# Every user-facing training key with a bad value, and what its one line must say (the key and what it accepts).
BAD_VALUES = [
    ("data.image_size=-5", ["data.image_size=-5 must be in [8, 4096], or null"]),
    ("data.image_size=0", ["data.image_size=0 must be in [8, 4096], or null"]),
    ("data.image_size=abc", ["data.image_size='abc' is not valid: it must be an integer in [8, 4096], or null"]),
    ("data.image_size=1.5", ["data.image_size=1.5 is not valid: it must be an integer"]),
    ("data.batch_size=0", ["data.batch_size=0 must be a number >= 1"]),
    ("data.batch_size=abc", ["data.batch_size='abc' is not valid: it must be an integer >= 1"]),
    ("data.num_workers=-1", ["data.num_workers=-1 must be a number >= 0"]),
    ("data.val_fraction=1.5", ["data.val_fraction=1.5 must be in [0, 1)"]),
    ("data.test_fraction=-0.1", ["data.test_fraction=-0.1 must be in [0, 1)"]),
    ("data.cv_folds=-2", ["data.cv_folds=-2 must be a number >= 0"]),
    ("data.cv_fold=-1", ["data.cv_fold=-1 must be a number >= 0"]),
    ("data.resize=stretch", ["data.resize='stretch' is not valid: it must be one of: squash, pad, crop"]),
    ("data.balance=maybe", ["data.balance='maybe' is not valid: it must be one of: none, loss, sampler"]),
    ("data.on_bad_file=ignore", ["data.on_bad_file='ignore' is not valid: it must be one of: skip, error"]),
    ("data.downsample_to=4", ["data.downsample_to=4 must be in [8, 4096], or null"]),
    ("data.verify=maybe", ["data.verify='maybe' is not valid: it must be true or false"]),
    ("data.carve_val=maybe", ["data.carve_val='maybe' is not valid: it must be true or false"]),
    ("data.near_duplicate_threshold=-1", ["data.near_duplicate_threshold=-1 must be a number >= 0"]),
    ("data.cache=sometimes", ["data.cache='sometimes' is not valid: it must be true or false"]),
    ("data.nope=1", ["data.nope is not an option here"]),
    ("data=mnist", ["data=mnist is not an option; choose one of:", "pneumoniamnist"]),
    ("model=resnet9000", ["model=resnet9000 is not an option; choose one of:", "efficientnet_lite0"]),
    ("model.in_chans=2", ["model.in_chans=2 must be one of: 1, 3"]),
    ("model.drop_rate=1.5", ["model.drop_rate=1.5 must be in [0, 1)"]),
    ("model.head_hidden=-1", ["model.head_hidden=-1 must be a number >= 0"]),
    ("model.image_size=64", ["model.image_size no longer exists: use data.image_size"]),
    ("model.pretrained=maybe", ["model.pretrained='maybe' is not valid: it must be true or false"]),
    ("trainer.max_epochs=0", ["trainer.max_epochs=0 must be an integer >= 1"]),
    ("trainer.max_epochs=abc", ["trainer.max_epochs='abc' must be an integer >= 1"]),
    ("trainer.accelerator=tpu", ["trainer.accelerator=tpu: no XLA device is available", "available here: cpu"]),
    ("trainer.accelerator=quantum", ["trainer.accelerator='quantum' is not valid; choose one of: cpu, gpu"]),
    ("trainer.precision=bf17", ["Invalid trainer settings", "bf17"]),
    ("trainer=tpu", ["trainer=tpu is not an option; choose one of: cpu, ddp, ddp_cpu, gpu"]),
    ("optimizer=adamx", ["optimizer=adamx is not an option; choose one of: adam, adamw, sgd"]),
    ("optimizer._target_=torch.optim.Nope", ["optimizer: cannot build torch.optim.Nope"]),
    ("optimizer.lr=-1", ["optimizer needs _target_ (a torch.optim class) and lr >= 0"]),
    ("optimizer.lr=abc", ["optimizer needs _target_ (a torch.optim class) and lr >= 0"]),
    ("+optimizer.betas=oops", ["optimizer: cannot build torch.optim.AdamW"]),
    ("scheduler=sometimes", ["scheduler=sometimes is not an option; choose one of: cosine, none, plateau"]),
    ("scheduler.eta_min=abc", ["scheduler: cannot build torch.optim.lr_scheduler.CosineAnnealingLR"]),
    ("warmup_epochs=-1", ["warmup_epochs=-1 must be a number >= 0"]),
    ("backbone_lr_mult=-1", ["backbone_lr_mult=-1.0 must be a number >= 0"]),
    ("label_smoothing=1.0", ["label_smoothing=1.0 must be in [0, 1)"]),
    ("label_smoothing=nan", ["label_smoothing=nan must be in [0, 1)"]),
    ("log_figures_every=0", ["log_figures_every=0 must be a number >= 1"]),
    ("seed=abc", ["seed='abc' is not valid: it must be an integer"]),
    ("channels_last=maybe", ["channels_last='maybe' is not valid: it must be true or false"]),
    ("checkpoint.monitor=val/nope", ["checkpoint.monitor='val/nope' is not logged; choose one of:", "val/auroc"]),
    ("checkpoint.mode=up", ["checkpoint.mode='up' is not valid: it must be one of: min, max"]),
    ("checkpoint.select=median", ["checkpoint.select='median' is not valid: it must be one of: best, last"]),
    ("early_stopping.patience=-1", ["early_stopping.patience=-1 must be a number >= 0"]),
    ("ood.fit_max=0", ["ood.fit_max=0 must be a number >= 1"]),
    ("divergence.max_loss=0", ["divergence.max_loss=0.0 must be a number > 0"]),
    ("divergence.max_loss=nan", ["divergence.max_loss=nan must be a number > 0"]),
    ("finetune.unfreeze_at_epoch=-1", ["finetune.unfreeze_at_epoch=-1 must be a number >= 0"]),
    ("finetune.unfreeze_lr_mult=0", ["finetune.unfreeze_lr_mult=0.0 must be a number > 0"]),
    ("ema.decay=1.0", ["ema.decay=1.0 must be in [0, 1) (0: off)"]),
    ("ema.start_epoch=-1", ["ema.start_epoch=-1 must be a number >= 0"]),
    ("mixup.mixup_alpha=-1", ["mixup.mixup_alpha=-1.0 must be a number >= 0"]),
    ("mixup.prob=2", ["mixup.prob=2.0 must be in [0, 1]"]),
    ("logger=nope", ["logger=nope is not an option; choose one of:", "mlflow", "many_loggers"]),
    ("callbacks=nope", ["callbacks=nope is not an option; choose one of: default,", "none"]),
    ("+callbacks.x._target_=no.such.Callback", ["callbacks.x: cannot build no.such.Callback"]),
    ("optim.lr=0.1", ["optim.lr no longer exists: use optimizer.lr"]),
    ("+optim.name=adam", ["optim.name no longer exists: use optimizer=adamw|adam|sgd"]),
    ("finetune.backbone_lr_mult=0.3", ["finetune.backbone_lr_mult no longer exists: use finetune.unfreeze_lr_mult"]),
    (
        "paths.output_dir=/somewhere/else",
        ["paths.output_dir=/somewhere/else is this run's own directory", "paths.log_dir"],
    ),
    ("warmup_epochs=1 scheduler=plateau", ["warmup_epochs>0 does not combine with scheduler=plateau"]),
    ("warmup_epochs=2 finetune.unfreeze_at_epoch=1", ["finetune.unfreeze_at_epoch=1 falls inside the warm-up"]),
    ("checkpoint.monitor=val/loss", ["checkpoint.monitor=val/loss is a loss: set checkpoint.mode=min"]),
    ("progressive_resize.start_size=16", ["progressive_resize.start_size=16 must be a number >= 32"]),
]
if not CUDA:
    BAD_VALUES.append(("trainer.accelerator=gpu", ["trainer.accelerator=gpu: no CUDA device", "available here: cpu"]))


@pytest.fixture(scope="module")
def two_class_folder(tmp_path_factory):
    return make_class_folders(tmp_path_factory.mktemp("bad") / "pneu", ["NORMAL", "PNEUMONIA"], 2, ["train", "test"])


@pytest.mark.parametrize(("overrides", "expected"), BAD_VALUES, ids=[row[0] for row in BAD_VALUES])
def test_every_user_facing_key_refuses_bad_values(two_class_folder, tmp_path, caplog, overrides, expected):
    run = tmp_path / "run"
    base = ["data=pneumonia", f"data.root={two_class_folder}", *TINY]
    message = _refusal([*base, *overrides.split()], run, caplog)
    assert "\n" not in message
    for text in expected:
        assert text in message, message
    _nothing_written(run)


def test_a_class_sampler_is_refused_for_multilabel_data(tmp_path, caplog):
    run = tmp_path / "run"
    message = _refusal(["data=nih14", f"data.root={shared('nih')}", "data.balance=sampler", *TINY], run, caplog)
    assert "data.balance=sampler draws by class, which multi-label data has not" in message
    _nothing_written(run)
