"""kill -9 during training, then resume=true: the run ends exactly where an uninterrupted one ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch

from lungnet.artifacts.checkpoint import CheckpointError, read_checkpoint
from lungnet.data.multi import make_source
from lungnet.data.sources import DataError
from lungnet.train.checks import plain
from lungnet.train.training import build_module, check_resume_compatible, resume_target, train
from tests.conftest import ROOT, TINY, compose_cfg, make_class_folders, offline_env, write_png


class SlowBatches(pl.Callback):
    """Test-only: sleeps after every training batch so the test has time to kill the run mid-epoch.

    Sleeping changes no number; it is injected with ``+callbacks.slow._target_=tests.train.test_resume.SlowBatches``.
    """

    def __init__(self, seconds: float = 0.2) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args, **kwargs) -> None:
        time.sleep(self.seconds)


def _command(data: Path, run_dir: Path, workers: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "train.py"),
        "data=pneumoniamnist",
        f"data.root={data}",
        "model=simple_cnn",
        "data.image_size=32",
        "data.batch_size=8",
        f"data.num_workers={workers}",
        "data.persistent_workers=false",
        "trainer.max_epochs=3",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=2",
        "model.drop_rate=0.3",  # dropout draws from the global RNG: must resume exactly too
        "log_figures_every=100",
        "bootstrap.resamples=50",  # the validation summary's intervals: not what these tests compare
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def _epoch_of(ckpt: Path) -> int:
    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"])
    except (OSError, RuntimeError, EOFError, KeyError):
        return -1


def _per_epoch(run_dir: Path, prefix: str) -> pd.DataFrame:
    log = pd.read_csv(run_dir / "csv" / "metrics.csv")
    cols = [c for c in log.columns if c.startswith(prefix)]
    rows = log.dropna(subset=cols, how="all")
    return rows[["epoch", *cols]].groupby("epoch").first().sort_index()


def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path):
    data = make_class_folders(tmp_path / "pneu", ["NORMAL", "PNEUMONIA"], 16, ["train", "val", "test"])
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    ref_proc = subprocess.Popen(
        _command(data, reference, 0), cwd=tmp_path, env=offline_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    slow = ["+callbacks.slow._target_=tests.train.test_resume.SlowBatches", "+callbacks.slow.seconds=0.5"]
    proc = subprocess.Popen(
        _command(data, killed, 1, *slow),
        cwd=tmp_path,
        env=offline_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: the kill takes its loader workers too (they hold stderr)
    )
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if last.exists() and _epoch_of(last) >= 1:
            os.killpg(proc.pid, signal.SIGKILL)  # during epoch 2, the last of 0..2
            break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-3000:]
    assert not (killed / "metrics.json").exists()
    assert _epoch_of(last) in (1, 2)

    resumed = subprocess.run(
        _command(data, killed, 1, "resume=true"),
        cwd=tmp_path,
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, ref_err = ref_proc.communicate(timeout=600)
    assert ref_proc.returncode == 0, ref_err.decode()[-3000:]

    a = json.loads((reference / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert b["epochs_trained"] == a["epochs_trained"] == 3
    for split in ("val", "test"):
        for key in ("accuracy", "auroc_macro", "f1_macro"):
            assert b[split][key] == pytest.approx(a[split][key], abs=1e-6), (split, key)
    for prefix in ("val/", "train/loss_epoch"):
        pd.testing.assert_frame_equal(_per_epoch(killed, prefix), _per_epoch(reference, prefix), atol=1e-6, rtol=0)
    assert len(_per_epoch(killed, "val/")) == 3  # every epoch's row survived the kill and the resume
    hist_a, hist_b = (pd.read_csv(run / "history.csv").set_index("epoch") for run in (reference, killed))
    assert hist_b.index.tolist() == [0, 1, 2]  # lungnet's own record too, epochs counted from 0
    same = [c for c in hist_a.columns if c.startswith("val/") or c == "train/loss_epoch"]
    pd.testing.assert_frame_equal(hist_b[same], hist_a[same], atol=1e-6, rtol=0)
    probs_a = pd.read_csv(reference / "predictions_test.csv").filter(like="p_")
    probs_b = pd.read_csv(killed / "predictions_test.csv").filter(like="p_")
    pd.testing.assert_frame_equal(probs_b, probs_a, atol=1e-6, rtol=0)
    ckpt = torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["optimizer_states"] and ckpt["lr_schedulers"]
    assert not list(killed.rglob("*.tmp"))


def test_resume_paths(tmp_path):
    run = tmp_path / "run"
    assert resume_target(run, True)[0] is None  # nothing yet: fresh start
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert str(resume_target(tmp_path / "other", str(run))[0]) == str(run / "checkpoints" / "last.ckpt")
    assert str(resume_target(run, True)[0]) == str(run / "checkpoints" / "last.ckpt")
    assert resume_target(run, False)[0] is None
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        resume_target(run, str(tmp_path / "missing"))


@pytest.mark.parametrize(
    ("change", "policy"),
    [("replace", "skip"), ("break", "skip"), ("break", "error")],
    ids=["replaced", "unreadable-skip", "unreadable-error"],
)
def test_refused_resume_leaves_the_run_directory_as_it_was(tmp_path, change, policy):
    """Changed images change the recomputed splits: resume refuses before rewriting the run's split files.

    A val image replaced by another, or made unreadable (left out under ``on_bad_file=skip``; under ``error`` the
    changed splits are reported first, so the run's empty ``bad_files.csv`` is not rewritten either).
    """
    data = make_class_folders(tmp_path / "pneu", ["NORMAL", "PNEUMONIA"], 8, ["train", "val"])
    run = tmp_path / "run"
    args = ["data=pneumoniamnist", f"data.root={data}", f"data.on_bad_file={policy}", *TINY, "scheduler=none"]
    train(compose_cfg("train", args), run)
    kept = ["splits/train.csv", "splits/val.csv", "splits/test.csv", "data_report.json", "bad_files.csv"]
    before = {name: (run / name).read_bytes() for name in kept}
    image = sorted((data / "val").rglob("*.png"))[0]
    if change == "replace":
        image.unlink()
        write_png(image.with_name("new.png"), seed=999)
    else:
        image.write_bytes(b"not an image")
    resume = ["resume=true", "trainer.max_epochs=2"]
    with pytest.raises(DataError, match=r"differ from those it was trained with: val \(\d+ images then.*resume=false"):
        train(compose_cfg("train", [*args, *resume]), run)
    assert {name: (run / name).read_bytes() for name in kept} == before
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 0  # not trained further


def test_a_longer_resume_under_a_cosine_schedule_is_refused(tmp_path):
    """The cosine schedule is laid out over trainer.max_epochs: resuming for longer would restart it."""
    data = make_class_folders(tmp_path / "pneu", ["NORMAL", "PNEUMONIA"], 8, ["train", "val"])
    run, args = tmp_path / "run", ["data=pneumoniamnist", f"data.root={data}", *TINY]
    train(compose_cfg("train", args), run)
    with pytest.raises(CheckpointError, match=r"max_epochs=2: its cosine learning-rate schedule was laid out over 1"):
        train(compose_cfg("train", [*args, "resume=true", "trainer.max_epochs=2"]), run)
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 0


def test_a_resume_with_another_split_seed_is_refused(tmp_path):
    """The checkpoint's split seed (its seed, for one older than data.split_seed) is the resumed run's: another
    one is refused in one line before the run directory is touched."""
    cfg = compose_cfg("train", [*TINY, f"data.root={tmp_path / 'syn'}"])
    data_cfg = plain(cfg.data)
    module = build_module(cfg, make_source(data_cfg), data_cfg)
    ckpt = {"hyper_parameters": {**module.hparams, "data": {**data_cfg, "split_seed": 7}}}
    with pytest.raises(CheckpointError, match="data.split_seed: checkpoint 7, config 42"):
        check_resume_compatible(ckpt, tmp_path / "last.ckpt", module, data_cfg, ema=False)
    ckpt["hyper_parameters"]["data"]["split_seed"] = 42
    ckpt["state_dict"] = module.state_dict()
    check_resume_compatible(ckpt, tmp_path / "last.ckpt", module, data_cfg, ema=False)
    assert not (tmp_path / "syn").exists()
