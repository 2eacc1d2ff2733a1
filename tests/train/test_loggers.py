"""Loggers from the logger group: MLflow file store, TensorBoard HPARAMS with the final metrics, true hparams."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from lungnet.train.training import train
from tests.conftest import TINY, compose_cfg, make_class_folders


def _unbalanced(tmp: Path) -> Path:
    """Pneumonia layout whose training split has 6 NORMAL and 16 PNEUMONIA images (class weights != 1)."""
    data = make_class_folders(tmp / "pneu", ["NORMAL", "PNEUMONIA"], 6, ["train", "val", "test"])
    extra = make_class_folders(tmp / "more", ["PNEUMONIA"], 10, ["train"], size=40)
    for path in (extra / "train" / "PNEUMONIA").glob("*.png"):
        shutil.copy(path, data / "train" / "PNEUMONIA" / f"more_{path.name}")
    return data


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loggers")
    data = _unbalanced(tmp)
    run = tmp / "run"
    args = ["data=pneumonia", f"data.root={data}", "data.carve_val=false", *TINY, "logger=many_loggers"]
    results = train(compose_cfg("train", [*args, "log_figures_every=100"]), run)
    return run, results


def test_many_loggers_write_every_local_store(many):
    run, _ = many
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "csv" / "metrics.csv").is_file() and (run / "csv" / "hparams.yaml").is_file()
    assert list((run / "mlruns").glob("*/*/meta.yaml"))


def test_hparams_yaml_holds_the_final_class_weights_and_data_facts(many):
    run, _ = many
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    weights = ckpt["hyper_parameters"]["class_weights"]
    assert weights and weights[0] > 1 > weights[1]  # 6 NORMAL vs 16 PNEUMONIA training images
    for logger in ("tensorboard", "csv"):
        hp = yaml.safe_load((run / logger / "hparams.yaml").read_text())
        assert hp["class_weights"] == pytest.approx(weights), logger
        assert hp["data_report"]["sizes"]["train"] == 22 and hp["spec"]["input_size"] == 32
        assert hp["optimizer"]["_target_"] == "torch.optim.AdamW" and hp["data"]["balance"] == "loss"
    assert ckpt["hyper_parameters"]["data_report"]["class_counts"]["train"] == {"NORMAL": 6, "PNEUMONIA": 16}


def test_mlflow_file_store_has_the_runs_metrics_and_params(many):
    run, results = many
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"file:{run / 'mlruns'}")
    found = client.search_runs([client.get_experiment_by_name("lungnet").experiment_id])
    assert len(found) == 1
    data = found[0].data
    assert json.loads(data.params["class_weights"].replace("'", '"'))[0] > 1
    assert data.params["optimizer/_target_"] == "torch.optim.AdamW"
    assert data.metrics["final/val_auroc_macro"] == pytest.approx(results["val"]["auroc_macro"])
    assert "val/auroc" in data.metrics and "train/loss_epoch" in data.metrics


def test_tensorboard_hparams_tab_shows_the_final_val_metrics(many):
    run, results = many
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {"final/val_auroc_macro", "final/test_accuracy"} <= {m.name.tag for m in experiment.metric_infos}
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert session.session_start_info.hparams["data_report/sizes/train"].number_value == 22
    scalar = events.Scalars("final/val_auroc_macro")[-1].value
    assert scalar == pytest.approx(results["val"]["auroc_macro"], abs=1e-6)


@pytest.mark.skipif(
    importlib.util.find_spec("wandb") is None, reason="wandb not installed (pip install lungnet[wandb])"
)
def test_wandb_logs_offline_into_the_run_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    data = make_class_folders(tmp_path / "pneu", ["NORMAL", "PNEUMONIA"], 4, ["train", "val"])
    run = tmp_path / "run"
    cfg = compose_cfg("train", ["data=pneumoniamnist", f"data.root={data}", *TINY, "logger=wandb"])
    train(cfg, run)
    assert list((run / "wandb").glob("offline-run-*/run-*.wandb"))


def test_a_missing_logger_package_is_one_line(tmp_path, caplog, monkeypatch):
    from lungnet.commands.wrapper import run_safely

    monkeypatch.setattr("pytorch_lightning.loggers.mlflow._MLFLOW_AVAILABLE", False)
    data = make_class_folders(tmp_path / "pneu", ["NORMAL", "PNEUMONIA"], 2, ["train", "val"])
    cfg = compose_cfg("train", ["data=pneumoniamnist", f"data.root={data}", *TINY, "logger=mlflow"])
    with pytest.raises(SystemExit) as info:
        run_safely(train, cfg, tmp_path / "run")
    assert info.value.code == 2
    assert "logger.mlflow: cannot build" in caplog.text and "pip install 'lungnet[mlflow]'" in caplog.text
    assert not (tmp_path / "run").exists()
