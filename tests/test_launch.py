"""Entry points: config mistakes are one line and exit 2 before any file; resume=<run dir> replays that run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lungnet.errors import ConfigError
from lungnet.launch import replay_resume
from tests.conftest import TINY, make_class_folders, run_script


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


def _saved_run(tmp_path: Path, overrides: list[str]) -> Path:
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    return run


def test_replay_resume_rebuilds_the_command_line(tmp_path):
    run = _saved_run(tmp_path, ["data=pneumoniamnist", "model=simple_cnn", "trainer.max_epochs=1", "resume=true"])
    argv = replay_resume(["train.py", f"resume={run}", "trainer.max_epochs=3", "data.num_workers=0"])
    assert argv == [
        "train.py",
        "data=pneumoniamnist",
        "model=simple_cnn",
        "trainer.max_epochs=3",
        "data.num_workers=0",
        f"resume={run}",
        f"hydra.run.dir={run}",
    ]
    same = replay_resume(["train.py", f"resume={run}", "model=simple_cnn"])  # repeating a setting is fine
    assert same.count("model=simple_cnn") == 1 and "data=pneumoniamnist" in same
    for line in ("train.py model=x", "train.py resume=true", f"train.py -m resume={run}", "train.py"):
        assert replay_resume(line.split()) == line.split()  # nothing to replay
    with pytest.raises(ConfigError, match=r"model=resnet18 would change them\. Only trainer.max_epochs"):
        replay_resume(["train.py", f"resume={run}", "model=resnet18"])
    with pytest.raises(ConfigError, match="continues in that directory"):
        replay_resume(["train.py", f"resume={run}", f"hydra.run.dir={tmp_path}/x"])


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
