"""Entry points: config mistakes are one line and exit 2 before any file; resume=<run dir> replays that run."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lungnet.commands import train as train_cmd
from lungnet.commands.launch import group_choices, replay_resume
from lungnet.errors import ConfigError
from tests.conftest import CONF, TINY, make_class_folders, run_cli, run_script


@pytest.mark.parametrize(
    ("script", "args", "expected"),
    [
        (
            "train.py",
            ["data.image_size=abc"],
            "data.image_size='abc' is not valid: it must be an integer in [8, 4096], or null",
        ),
        (
            "train.py",
            ["data.balance=maybe"],
            "data.balance='maybe' is not valid: it must be one of: none, loss, sampler",
        ),
        ("train.py", ["data=mnist"], "data=mnist is not an option; choose one of: cxr4, darkcovidnet"),
        ("train.py", ["optim.lr=0.1"], "optim.lr no longer exists: use optimizer.lr"),
        ("train.py", ["finetune.backbone_lr_mult=0.3"], "finetune.backbone_lr_mult no longer exists: use finetune."),
        ("train.py", ["model.nope=1"], "model.nope is not an option here"),
        ("train.py", ["paths.output_dir=elsewhere"], "paths.log_dir=<folder>"),
        ("train.py", ["logger=null"], "logger=null: a config group takes an option name (csv, default, many_loggers"),
        ("evaluate.py", ["ckpt=x.ckpt", "device=tpu"], "device='tpu' is not valid: it must be one of: auto, cpu, cuda"),
        ("predict.py", ["ckpt=x", "input=y", "batch_size=abc"], "batch_size='abc' is not valid: it must be an integer"),
    ],
)
def test_config_mistakes_are_one_line_and_exit_2_before_any_file(tmp_path, script, args, expected):
    proc = run_script(script, [*args, f"paths.log_dir={tmp_path / 'out'}"], tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert expected in lines[0], lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "outputs").exists()


CONF_ROOT = str(CONF)  # the configs' search path, as lungnet.commands.wrapper.config_path gives it in a checkout


def _saved_run(tmp_path: Path, overrides: list[str]) -> Path:
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), run / ".hydra" / "overrides.yaml")  # as Hydra writes it
    return run


def test_replay_resume_rebuilds_the_command_line(tmp_path):
    run = _saved_run(tmp_path, ["data=pneumoniamnist", "model=simple_cnn", "trainer.max_epochs=1", "resume=true"])
    argv = replay_resume(["train.py", f"resume={run}", "trainer.max_epochs=3", "data.num_workers=0"], CONF_ROOT)
    assert argv == [
        "train.py",
        "data=pneumoniamnist",
        "model=simple_cnn",
        "trainer.max_epochs=3",
        "data.num_workers=0",
        f"resume={run}",
        f"hydra.run.dir={run}",
    ]
    same = replay_resume(["train.py", f"resume={run}", "model=simple_cnn"], CONF_ROOT)  # repeating a setting is fine
    assert same.count("model=simple_cnn") == 1 and "data=pneumoniamnist" in same
    for line in ("train.py model=x", "train.py resume=true", f"train.py -m resume={run}", "train.py"):
        assert replay_resume(line.split(), CONF_ROOT) == line.split()  # nothing to replay
    with pytest.raises(ConfigError, match=r"model=resnet18 would change them\. Only trainer.max_epochs"):
        replay_resume(["train.py", f"resume={run}", "model=resnet18"], CONF_ROOT)
    with pytest.raises(ConfigError, match="continues in that directory"):
        replay_resume(["train.py", f"resume={run}", f"hydra.run.dir={tmp_path}/x"], CONF_ROOT)


# saved overrides a received run directory may carry that resume=<run dir> must not replay, and why
NOT_REPLAYED = [
    ("+callbacks.evil._target_=shutil.copyfile", "_target_ names code for Hydra to run"),
    ("+callbacks.evil._args_=[a,b]", "_args_ names code for Hydra to run"),
    ("optimizer._target_=torch.optim.RAdam", "_target_ names code"),  # a genuine override, but code: trust it
    ("+hydra.callbacks.x._target_=shutil.copyfile", "Hydra's own settings (hydra.*)"),
    ("hydra/launcher=joblib", "Hydra's own settings"),
    ("trainer.plugins={_target_: shutil.copyfile}", "_target_ names code"),
    ("callbacks.lr_monitor=[{_partial_: true}]", "_partial_ names code"),
    ("""data.root='${oc.decode:"{_target_: shutil.copyfile}"}'""", "the resolver oc.decode is not replayed"),
    ("+evil=1", "evil is not a key of the train schema"),
    ("+data.evil=1", "data.evil is not a key of the train schema"),
    ("resume.trust_overrides=true", "resume.trust_overrides is not a key of the train schema"),
    ("model=../../evil", "model='../../evil' is not an option; choose one of: densenet121"),
    ("model@x=resnet18", "a package (@) or sweep override"),
]


@pytest.mark.parametrize(("line", "why"), NOT_REPLAYED)
def test_replay_refuses_saved_overrides_outside_the_schema(tmp_path, line, why):
    """The file, the item, why, and the way out, in one line; resume.trust_overrides=true replays it as saved."""
    run = _saved_run(tmp_path, ["model=simple_cnn", line, "resume=true"])
    with pytest.raises(ConfigError) as exc:
        replay_resume(["train.py", f"resume={run}"], CONF_ROOT)
    message = str(exc.value)
    assert f"{run / '.hydra' / 'overrides.yaml'}, item 2 ({line}): {why}" in message, message
    assert "resume.trust_overrides=true" in message and "\n" not in message
    trusted = replay_resume(["train.py", f"resume={run}", "resume.trust_overrides=true"], CONF_ROOT)
    assert trusted == ["train.py", "model=simple_cnn", line, f"resume={run}", f"hydra.run.dir={run}"]


def test_replay_keeps_what_a_genuine_run_directory_holds(tmp_path):
    """Group choices (also null), schema keys, keys below dict-typed groups, list values, environment variables."""
    genuine = [
        "data=pneumoniamnist",
        "model=simple_cnn",
        "experiment=pneumoniamnist_best",
        "debug=null",
        "trainer=cpu",
        "callbacks=default",
        "data.options.findings=[Effusion,Atelectasis]",
        "data.root=${oc.env:HOME}/chest_xray",
        "trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=2",
        "callbacks.figures=null",
        "~callbacks.lr_monitor",
        "checkpoint.monitor=val/loss",
        "seed=7",
    ]
    run = _saved_run(tmp_path, genuine)
    assert replay_resume(["train.py", f"resume={run}"], CONF_ROOT)[1:-2] == genuine


@pytest.mark.parametrize(
    ("saved", "args", "expected"),
    [
        ("model: simple_cnn\n", [], "must be a list of override lines"),
        ("- [model, simple_cnn]\n", [], "must be a list of override lines"),
        ("- model=simple_cnn\n- 'data.root=[unclosed'\n", [], "item 2 (data.root=[unclosed): cannot be parsed"),
        ("- model: [\n", [], "cannot be read as Hydra's list of overrides"),
        ("- model=simple_cnn\n", ["resume.trust_overrides=maybe"], "must be true or false"),
    ],
)
def test_an_unreadable_saved_overrides_file_is_one_line(tmp_path, saved, args, expected):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(saved)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        replay_resume(["train.py", f"resume={run}", *args], CONF_ROOT)


def test_trust_overrides_needs_a_run_directory_to_replay(tmp_path):
    for args in (["resume=true"], [f"resume={tmp_path}"], ["-m", f"resume={tmp_path}", "seed=1,2"]):
        with pytest.raises(ConfigError, match="resume.trust_overrides applies only to resume=<run dir>"):
            replay_resume(["train.py", *args, "resume.trust_overrides=true"], CONF_ROOT)


def test_resuming_a_tampered_run_directory_writes_nothing(tmp_path, monkeypatch, caplog):
    """The issue's case: a received run directory that would copy a file on resume is refused, in one line."""
    src, dst = tmp_path / "src.txt", tmp_path / "dst.txt"
    src.write_text("x")
    evil = ["+callbacks.evil._target_=shutil.copyfile", f"+callbacks.evil._args_=[{src},{dst}]"]
    run = _saved_run(tmp_path, ["model=simple_cnn", *evil])
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exc:
        run_cli(train_cmd.main, [f"resume={run}"], monkeypatch)
    assert exc.value.code == 2 and not dst.exists()
    (message,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "item 2 (+callbacks.evil._target_=shutil.copyfile)" in message and "resume.trust_overrides" in message
    assert sorted(p.name for p in run.iterdir()) == [".hydra"]  # nothing written into the run directory


def test_group_choices_are_the_configs_own(tmp_path):
    choices = group_choices(CONF_ROOT)
    assert "hydra" not in choices and {"data", "model", "experiment", "debug", "local"} <= set(choices)
    assert "resnet18" in choices["model"] and "_base" not in choices["model"]


@pytest.mark.slow
def test_resume_run_dir_alone_continues_the_run(tmp_path):
    """A run with non-default data and model continues from ``resume=<run dir>`` (+ a longer schedule) alone."""
    data = make_class_folders(tmp_path / "pneu", ["NORMAL", "PNEUMONIA"], 8, ["train", "val"])
    run = tmp_path / "run"
    first = [
        "data=pneumoniamnist",
        f"data.root={data}",
        *TINY,
        "scheduler=none",  # a schedule not laid out over max_epochs: the run may be resumed for longer
        "log_figures_every=100",
        f"hydra.run.dir={run}",
    ]
    proc = run_script("train.py", first, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0

    refused = run_script("train.py", [f"resume={run}", "model=resnet18"], tmp_path, timeout=120)
    assert refused.returncode == 2 and "would change them" in refused.stdout + refused.stderr

    resumed = run_script("train.py", [f"resume={run}", "trainer.max_epochs=2"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["hyper_parameters"]["model"]["name"] == "simple_cnn"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_trained"] == 2 and metrics["model"] == "simple_cnn" and metrics["data"] == "pneumoniamnist"
    assert "Resuming from" in (run / "train.log").read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name == "outputs"] == []  # no stray run directory
    assert not (run / ".lungnet.lock").exists()  # let go at the end
