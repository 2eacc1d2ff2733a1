"""End-to-end: Hydra compose -> train -> self-describing checkpoint -> evaluate (in-process and as scripts)."""

import argparse
import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch

from lungnet.artifacts.checkpoint import CheckpointError, load_model, read_checkpoint
from lungnet.data.sources import DataError
from lungnet.evaluation.pipeline import evaluate
from lungnet.train.training import train
from tests.conftest import ROOT, compose_cfg, make_class_folders, offline_env, write_png
from tests.conftest import TINY as BASE_TINY

TINY = [*BASE_TINY, "log_figures_every=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("synthetic")
    cfg = compose_cfg(
        "train", [f"data.root={tmp / 'syn'}", "data.options.n_per_class=10", "data.options.size=48", *TINY]
    )
    run = tmp / "run"
    results = train(cfg, run)
    return run, results


def test_train_writes_a_complete_run_directory(trained):
    run, results = trained
    for name in (
        "config.yaml",
        "environment.json",
        "data_report.json",
        "metrics.json",
        "bad_files.csv",
        "predictions_val.csv",
        "predictions_test.csv",
        "splits/train.csv",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "csv/metrics.csv",
    ):
        assert (run / name).exists(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"accuracy", "f1_macro", "auroc_macro", "per_class", "confusion_matrix"}
    assert metrics["test"]["n"] == len(pd.read_csv(run / "splits" / "test.csv"))
    env = json.loads((run / "environment.json").read_text())
    assert len(env["data_fingerprint"]) == 64 and env["packages"]["torch"]


def test_checkpoint_is_self_describing_and_safe(trained):
    run, _ = trained
    ckpt = read_checkpoint(run / "checkpoints" / "best.ckpt")  # weights_only=True inside
    hp = ckpt["hyper_parameters"]
    assert hp["labels"] == ["Normal", "Consolidation", "Cavity", "Haze"]
    assert hp["spec"]["input_size"] == 32 and hp["data"]["source"] == "synthetic"
    loaded = load_model(run / "checkpoints" / "best.ckpt")
    assert loaded.model(torch.zeros(1, 1, 32, 32)).shape == (1, 4)
    assert loaded.seed == hp["extra"]["seed"] == 42  # evaluate and explain recompute the splits with it


def test_checkpoint_stores_the_optimizer_and_scheduler_as_plain_data(trained):
    run, _ = trained
    hp = read_checkpoint(run / "checkpoints" / "best.ckpt")["hyper_parameters"]
    assert hp["optimizer"] == {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3, "weight_decay": 1e-4}
    assert hp["scheduler"]["_target_"] == "torch.optim.lr_scheduler.CosineAnnealingLR"
    assert hp["data"]["balance"] == "loss" and type(hp["data"]["balance"]) is str  # no Enum objects inside


def test_checkpoint_from_before_the_config_groups_still_evaluates(trained, tmp_path):
    """Old checkpoints hold ``optim`` hyperparameters and a data config without the keys added since."""
    run, _ = trained
    state = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    hp = state["hyper_parameters"]
    for key in ("optimizer", "scheduler", "backbone_lr_mult", "warmup_epochs", "data_report"):
        hp.pop(key)
    hp["optim"] = {"name": "adamw", "lr": 1e-3, "scheduler": "cosine", "backbone_lr_mult": 1.0}
    for key in ("downsample_to", "cache", "cache_dir", "near_duplicates", "near_duplicate_threshold", "cv_folds"):
        hp["data"].pop(key)
    old = tmp_path / "old.ckpt"
    torch.save(state, old)
    out = evaluate(compose_cfg("evaluate", [f"ckpt={old}", "split=test", "explain.n=0"]), tmp_path / "eval")
    new = evaluate(
        compose_cfg("evaluate", [f"ckpt={run / 'checkpoints' / 'best.ckpt'}", "split=test", "explain.n=0"]),
        tmp_path / "eval_new",
    )
    assert out["accuracy"] == new["accuracy"] and out["n"] == new["n"]


def test_pickled_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"spec": argparse.Namespace(x=1)}}, path)
    with pytest.raises(CheckpointError, match="pickled"):
        read_checkpoint(path)


def test_evaluate_matches_training_metrics(trained, tmp_path):
    run, results = trained
    cfg = compose_cfg("evaluate", [f"ckpt={run / 'checkpoints' / 'best.ckpt'}", "split=test"])
    out = evaluate(cfg, tmp_path / "eval")
    assert out["accuracy"] == pytest.approx(results["test"]["accuracy"])
    preds = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    assert len(preds) == results["test"]["n"] and {"path", "true", "predicted", "p_Haze"} <= set(preds.columns)


def test_evaluate_split_all_on_an_external_folder(trained, tmp_path):
    run, _ = trained
    ext = make_class_folders(tmp_path / "external", ["Normal", "Haze"], 3)
    cfg = compose_cfg("evaluate", [f"ckpt={run / 'checkpoints' / 'best.ckpt'}", "split=all", f"data.root={ext}"])
    out = evaluate(cfg, tmp_path / "eval")
    assert out["n"] == 6


def test_evaluate_refuses_data_with_other_labels(trained, tiny_folder, tmp_path):
    run, _ = trained
    cfg = compose_cfg("evaluate", [f"ckpt={run / 'checkpoints' / 'best.ckpt'}", f"data.root={tiny_folder}"])
    with pytest.raises(Exception, match="not a lungnet synthetic data folder"):
        evaluate(cfg, tmp_path / "eval")


def test_evaluate_verifies_the_recomputed_splits(trained, tmp_path):
    run, _ = trained
    ckpt = run / "checkpoints" / "best.ckpt"
    recorded = read_checkpoint(ckpt)["hyper_parameters"]["extra"]["splits"]
    assert set(recorded) == {"train", "val", "test"}
    assert recorded["val"]["n"] == len(pd.read_csv(run / "splits" / "val.csv"))
    moved = tmp_path / "moved"
    shutil.copytree(load_model(ckpt).data["root"], moved)
    args = [f"ckpt={ckpt}", "split=val", f"data.root={moved}", "explain.n=0", "report.figures=false"]
    assert evaluate(compose_cfg("evaluate", args), tmp_path / "same")["n"] == recorded["val"]["n"]  # moved: same images
    victim = sorted(moved.rglob("*.png"))[0]
    write_png(victim, seed=999, size=48)  # one image now differs: its split no longer matches the checkpoint's
    with pytest.raises(DataError, match=r"differ from those it was trained with: \w+ \(\d+ images then"):
        evaluate(compose_cfg("evaluate", args), tmp_path / "changed")
    out = evaluate(compose_cfg("evaluate", [*args, "data.allow_leakage=true"]), tmp_path / "allowed")
    assert out["n"] == recorded["val"]["n"]


def test_training_without_a_val_split_monitors_the_training_loss(tmp_path):
    """data.val_fraction=0 on data that ships no val split: no validation, and the checkpoint and the plateau
    scheduler follow train/loss_epoch (the val loader used to raise after the run directory was written)."""
    data = make_class_folders(tmp_path / "chest_xray", ["NORMAL", "PNEUMONIA"], 6, ["train", "test"])
    args = ["data=pneumonia", f"data.root={data}", "data.val_fraction=0", "scheduler=plateau", "warmup_epochs=0"]
    tiny = [a if not a.startswith("trainer.max_epochs=") else "trainer.max_epochs=2" for a in TINY]
    results = train(compose_cfg("train", [*args, *tiny]), tmp_path / "run")
    assert "val" not in results and results["test"]["n"] == 12 and results["epochs_trained"] == 2
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    (plateau,) = ckpt["lr_schedulers"]
    assert 0 < plateau["best"] < float("inf")  # it saw a monitored value every epoch


def _run(args, cwd, env_extra=None, timeout=600):
    env = offline_env(**(env_extra or {}))
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def test_scripts_multirun_then_evaluate(tmp_path):
    """The documented commands: a two-model multirun, then evaluate.py on one of its checkpoints."""
    data = make_class_folders(tmp_path / "pneu", ["NORMAL", "PNEUMONIA"], 8, ["train", "val"])
    out = tmp_path / "outputs"
    args = [
        str(ROOT / "train.py"),
        "-m",
        "data=pneumoniamnist",
        f"data.root={data}",
        f"paths.log_dir={out}",
        "model=simple_cnn,resnet18",
        *[a for a in TINY if not a.startswith("model=")],
    ]
    proc = _run(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p for p in (out / "multirun").glob("*/*/*") if p.is_dir() and (p / "metrics.json").exists())
    assert [r.name.split("_", 1)[1] for r in runs] == ["pneumoniamnist_simple_cnn", "pneumoniamnist_resnet18"]
    ckpt = runs[1] / "checkpoints" / "best.ckpt"
    fast = ["audit=false", "explain.n=0", "bootstrap.resamples=50"]  # the audit and heatmaps: tests/evaluation
    proc = _run([str(ROOT / "evaluate.py"), f"ckpt={ckpt}", "split=val", *fast, f"paths.log_dir={out}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(next((out / "eval").glob("*/*/metrics.json")).read_text())
    assert {"accuracy", "auroc_macro", "confusion_matrix", "per_class"} <= set(metrics)
    assert set(metrics["per_class"]["PNEUMONIA"]) >= {"precision", "recall", "f1"}


def test_user_errors_exit_nonzero_with_one_message(tmp_path):
    proc = _run(
        [
            str(ROOT / "train.py"),
            "data=nih6",
            f"data.root={tmp_path / 'missing'}",
            f"paths.log_dir={tmp_path / 'o'}",
        ],
        tmp_path,
    )
    assert proc.returncode == 2
    assert "Data root for dataset 'nih6' not found" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    proc = _run(
        [
            str(ROOT / "train.py"),
            "model.name=resnet9000",
            f"paths.log_dir={tmp_path / 'o'}",
            f"data.root={tmp_path / 'syn'}",
            "data.options.n_per_class=2",
        ],
        tmp_path,
    )
    assert proc.returncode == 2 and "Unknown model 'resnet9000'" in proc.stderr + proc.stdout


@pytest.mark.parametrize(
    ("flags", "precision", "expected"),
    [
        ({"avx2", "avx512_bf16"}, "auto", "bf16-mixed"),
        ({"avx2"}, "auto", "32-true"),
        ({"avx2", "avx512_bf16"}, "32-true", "32-true"),  # explicit wins
    ],
)
def test_trainer_cpu_precision_auto_is_resolved_and_recorded(tmp_path, monkeypatch, caplog, flags, precision, expected):
    from lungnet import hardware

    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    assert compose_cfg("train", []).trainer.precision == "auto"  # trainer=cpu's default
    overrides = [o for o in TINY if not o.startswith("trainer.precision=")]
    cfg = compose_cfg(
        "train",
        [
            f"data.root={tmp_path / 'syn'}",
            "data.options.n_per_class=4",
            "data.options.size=32",
            *overrides,
            f"trainer.precision={precision}",
            "precision_auto.bf16_min_image_size=32",  # the tiny model's input size counts as large here
        ],
    )
    caplog.set_level("INFO", logger="lungnet.train.training")
    train(cfg, tmp_path / "run")
    env = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert env["precision"]["trainer.precision"] == expected and env["precision"]["requested"] == precision
    assert env["precision"]["native_bf16"] == ("avx512_bf16" in flags)
    assert f"precision: {expected}" in (tmp_path / "run" / "config.yaml").read_text()
    assert any(f"Training precision {expected}" in r.getMessage() for r in caplog.records)
