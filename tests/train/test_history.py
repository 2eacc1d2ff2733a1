"""history.csv, lungnet's own per-epoch record, and curves.png drawn from it whatever the logger."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from lungnet.train.history import EpochHistory, epoch_values, read_history
from lungnet.train.training import train
from tests.conftest import TINY, compose_cfg, make_class_folders
from tests.scoring.test_plots import assert_png


def test_epoch_values_keep_the_epoch_level_numbers():
    metrics = {
        "train/loss": 0.9,
        "train/loss_step": 0.8,
        "train/loss_epoch": 0.9,
        "train/acc": 0.5,
        "val/auroc": 0.7,
        "val/bad": float("nan"),
        "loss": 0.8,  # the progress bar's step loss: not a train/ or val/ value
        "val/per_class": [0.1, 0.2],
    }
    assert epoch_values(metrics) == {"train/loss_epoch": 0.9, "train/acc": 0.5, "val/auroc": 0.7}


def test_read_history_checks_every_value(tmp_path, caplog):
    path = tmp_path / "history.csv"
    path.write_text("epoch,step,val/auroc\n0,2,0.6\n1.5,4,0.7\nx,5,0.7\n-1,6,0.1\n1,4,abc\n1,4,0.8\n2,6,inf\n")
    table = read_history(path)
    assert table["epoch"].tolist() == [0, 1, 2]
    assert table["val/auroc"].iloc[1] == 0.8  # a repeated epoch keeps its last row
    assert table["val/auroc"].isna().iloc[2]  # not finite: empty
    assert "dropped 3 row(s)" in caplog.text
    assert read_history(tmp_path / "none.csv") is None
    (tmp_path / "no_epoch.csv").write_text("step,val/auroc\n1,0.5\n")
    assert read_history(tmp_path / "no_epoch.csv") is None


def test_a_resumed_run_keeps_the_rows_its_checkpoint_covers(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,step,train/loss_epoch\n0,2,1.0\n1,4,0.9\n2,6,0.8\n")
    history = EpochHistory(path)
    history.on_train_start(SimpleNamespace(current_epoch=2, is_global_zero=True), None)
    assert [row["epoch"] for row in history._rows] == [0, 1]  # epoch 2 reruns: its old row goes
    fresh = EpochHistory(path)
    fresh.on_train_start(SimpleNamespace(current_epoch=0, is_global_zero=True), None)
    assert fresh._rows == []


def _train(tmp: Path, logger: str, epochs: int) -> Path:
    data = make_class_folders(tmp / "pneu", ["NORMAL", "PNEUMONIA"], 6, ["train", "val", "test"])
    run = tmp / "run"
    overrides = ["data=pneumonia", f"data.root={data}", "data.carve_val=false", *TINY, f"logger={logger}"]
    train(compose_cfg("train", [*overrides, f"trainer.max_epochs={epochs}"]), run)
    return run


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed")
def test_a_run_logged_to_mlflow_alone_has_its_history_and_curves(tmp_path):
    run = _train(tmp_path, "mlflow", 2)
    assert not (run / "csv").exists() and list((run / "mlruns").glob("*/*/meta.yaml"))
    history = pd.read_csv(run / "history.csv")
    assert history["epoch"].tolist() == [0, 1]  # counted from 0
    assert history["step"].tolist() == [2, 4]  # 12 images in batches of 8
    wanted = ["train/loss_epoch", "train/acc", "train/auroc", "val/loss", "val/acc", "val/auroc", "lr/head"]
    assert history[wanted].notna().all().all()
    assert list(history.columns[:3]) == ["epoch", "step", "train/acc"]  # epoch, step, train/*, val/*, lr/*
    assert history.columns[-1].startswith("lr/")
    assert_png(run / "curves.png")


def test_logger_none_trains_with_no_logger_and_keeps_history_and_curves(tmp_path):
    run = _train(tmp_path, "none", 1)
    assert not any((run / d).exists() for d in ("tensorboard", "csv", "mlruns", "lightning_logs"))
    history = pd.read_csv(run / "history.csv")
    assert history["epoch"].tolist() == [0] and history["lr/head"].notna().all()  # no LearningRateMonitor needed
    assert_png(run / "curves.png")
