"""Training callbacks: the weight EMA and SWA validate, checkpoint and end with the average they report."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch

from lungnet.artifacts.checkpoint import CheckpointError, read_checkpoint
from lungnet.artifacts.decision import read_decision
from lungnet.commands.wrapper import run_safely
from lungnet.config_checks import pin_paths
from lungnet.evaluation.pipeline import evaluate
from lungnet.train.callbacks import WeightEMA
from lungnet.train.training import build_callbacks, train
from tests.conftest import TINY as BASE_TINY
from tests.conftest import compose_cfg

TINY = [*BASE_TINY, "log_figures_every=100", "trainer.max_epochs=2"]


def _train(tmp_path, *overrides):
    cfg = compose_cfg(
        "train",
        [f"data.root={tmp_path / 'syn'}", "data.options.n_per_class=10", "data.options.size=48", *TINY, *overrides],
    )
    run = tmp_path / "run"
    return run, train(cfg, run)


def _differs(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


def test_ema_checkpoint_holds_the_average_that_validation_scored(tmp_path):
    run, results = _train(tmp_path, "ema.decay=0.5", "ema.start_epoch=0", "checkpoint.select=last")
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")  # weights_only=True
    assert set(ckpt["current_model_state"]) == set(ckpt["state_dict"])
    assert _differs(ckpt["state_dict"], ckpt["current_model_state"])  # the average is not the live weights
    assert int(ckpt["averaging_state"]["n_averaged"]) == ckpt["global_step"]  # one update per optimizer step
    # what Lightning logged for the last epoch's validation is what the saved (averaged) weights score
    logged = pd.read_csv(run / "csv" / "metrics.csv").dropna(subset=["val/loss"]).iloc[-1]
    out = evaluate(compose_cfg("evaluate", [f"ckpt={run / 'checkpoints' / 'last.ckpt'}", "split=val"]), tmp_path / "e")
    assert out["accuracy"] == pytest.approx(float(logged["val/acc"]), abs=1e-6)
    assert results["val"]["accuracy"] == pytest.approx(out["accuracy"])


def test_ema_before_its_first_update_leaves_the_live_weights(tmp_path):
    run, _ = _train(tmp_path, "ema.decay=0.5", "ema.start_epoch=5")  # never reached in 2 epochs
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert "current_model_state" not in ckpt and "averaging_state" not in ckpt
    logged = pd.read_csv(run / "csv" / "metrics.csv").dropna(subset=["val/loss"]).iloc[-1]
    out = evaluate(compose_cfg("evaluate", [f"ckpt={run / 'checkpoints' / 'last.ckpt'}", "split=val"]), tmp_path / "e")
    assert out["accuracy"] == pytest.approx(float(logged["val/acc"]), abs=1e-6)


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.1])
def test_ema_decay_outside_the_open_interval_is_refused(decay):
    with pytest.raises(ValueError, match="ema.decay must be in"):
        WeightEMA(decay)


class EpochEndWeights(pl.Callback):
    """Test-only: the live weights after the last training batch of each epoch (what SWA averages)."""

    instances: list[EpochEndWeights] = []

    def __init__(self) -> None:
        self.weights: dict[int, dict] = {}
        EpochEndWeights.instances.append(self)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 == trainer.num_training_batches:
            self.weights[trainer.current_epoch] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def test_swa_checkpoint_holds_the_mean_of_the_last_epochs_weights(tmp_path):
    spy = "+callbacks.spy._target_=tests.train.test_callbacks.EpochEndWeights"
    run, results = _train(tmp_path, "trainer.max_epochs=3", "swa.epochs=2", "checkpoint.select=last", spy)
    snapshots = EpochEndWeights.instances.pop().weights
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert int(ckpt["averaging_state"]["n_averaged"]) == 2  # epochs 1 and 2, not epoch 0
    assert _differs(ckpt["state_dict"], ckpt["current_model_state"])
    for name, value in ckpt["state_dict"].items():
        if value.is_floating_point():
            assert torch.allclose(value, (snapshots[1][name] + snapshots[2][name]) / 2, atol=1e-6), name
    logged = pd.read_csv(run / "csv" / "metrics.csv").dropna(subset=["val/loss"]).iloc[-1]
    out = evaluate(compose_cfg("evaluate", [f"ckpt={run / 'checkpoints' / 'last.ckpt'}", "split=val"]), tmp_path / "e")
    assert out["accuracy"] == pytest.approx(float(logged["val/acc"]), abs=1e-6)
    assert results["val"]["accuracy"] == pytest.approx(out["accuracy"])


def test_select_last_makes_best_ckpt_the_final_epoch(tmp_path):
    """checkpoint.select=last: best.ckpt is not chosen on val; it is the final model (what a user evaluates)."""
    run, _ = _train(tmp_path, "trainer.max_epochs=3", "swa.epochs=2", "checkpoint.select=last")
    best, last = (read_checkpoint(run / "checkpoints" / f"{n}.ckpt") for n in ("best", "last"))
    assert best["epoch"] == last["epoch"] == 2 and not _differs(best["state_dict"], last["state_dict"])
    folder = run / "checkpoints"
    assert (folder / "best.ckpt").read_bytes() == (folder / "last.ckpt").read_bytes()
    record = read_decision(
        folder / "best.decision.json", folder / "best.ckpt", list(best["hyper_parameters"]["labels"])
    )
    assert record.ood is not None and record.checkpoint == "best.ckpt"  # predict.py on best.ckpt has its OOD gate
    for select, monitor in (("last", None), ("best", "val/auroc")):
        cfg = compose_cfg("train", [*TINY, f"checkpoint.select={select}", "checkpoint.monitor=val/auroc"])
        pin_paths(cfg, tmp_path / select)
        (ckpt,) = [c for c in build_callbacks(cfg, has_val=True) if isinstance(c, pl.callbacks.ModelCheckpoint)]
        assert ckpt.monitor == monitor and ckpt.save_top_k == (0 if select == "last" else 1)  # one write per epoch


def test_swa_stopped_before_its_epochs_says_so_and_keeps_the_live_weights(tmp_path, caplog):
    stop = "+trainer.max_steps=3"  # stops inside epoch 1, before the end of the first averaged epoch
    run, _ = _train(tmp_path, "trainer.max_epochs=3", "swa.epochs=2", "checkpoint.select=last", stop)
    assert "current_model_state" not in read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert any("before the averaged epochs" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [(["swa.epochs=2", "ema.decay=0.9"], "both average the weights"), (["swa.epochs=3"], "averages more epochs")],
)
def test_swa_settings_that_cannot_work_are_refused_before_the_run_folder(tmp_path, overrides, message):
    from lungnet.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        _train(tmp_path, *overrides)
    assert not (tmp_path / "run").exists()


class SeenLayout(pl.Callback):
    """Test-only: records whether each input reaches the model in channels_last layout."""

    instances: list[SeenLayout] = []

    def __init__(self) -> None:
        self.layouts: list[bool] = []
        SeenLayout.instances.append(self)

    def on_fit_start(self, trainer, pl_module) -> None:
        pl_module.model.register_forward_pre_hook(
            lambda _, args: self.layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))
        )


def test_channels_last_reaches_batches_and_changes_no_result(tmp_path):
    results, seen = {}, {}
    for flag in ("false", "true"):
        spy = "+callbacks.spy._target_=tests.train.test_callbacks.SeenLayout"
        results[flag] = _train(tmp_path / flag, f"channels_last={flag}", "model.in_chans=3", spy)[1]
        seen[flag] = SeenLayout.instances.pop().layouts
    assert seen["true"] and all(seen["true"]) and not any(seen["false"])
    for metric in ("accuracy", "auroc_macro"):
        assert results["true"]["val"][metric] == pytest.approx(results["false"]["val"][metric], abs=1e-6)


def test_resuming_an_ema_run_without_ema_is_refused(tmp_path):
    run, _ = _train(tmp_path, "ema.decay=0.5")
    cfg = compose_cfg(
        "train",
        [f"data.root={tmp_path / 'syn'}", "data.options.n_per_class=10", "data.options.size=48", *TINY, "resume=true"],
    )
    with pytest.raises(CheckpointError, match="trained with a weight average"):
        train(cfg, run)


class BatchNormModes(pl.Callback):
    """Test-only: per training batch, the epoch and whether every backbone BatchNorm layer is in training mode."""

    instances: list[BatchNormModes] = []

    def __init__(self) -> None:
        self.seen: list[tuple[int, bool, bool]] = []
        BatchNormModes.instances.append(self)

    def on_train_batch_start(self, trainer, pl_module, *args) -> None:
        norms = [m for m in pl_module.model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        frozen = not any(p.requires_grad for p in pl_module.model.backbone.parameters())
        self.seen.append((trainer.current_epoch, all(m.training for m in norms), frozen))


def test_frozen_backbone_normalises_with_its_running_statistics(tmp_path):
    """Head-only epochs see the features validation sees (BatchNorm in eval mode); unfreezing trains them."""
    BatchNormModes.instances.clear()
    _train(tmp_path, "finetune.unfreeze_at_epoch=1", "+callbacks.bn._target_=tests.train.test_callbacks.BatchNormModes")
    seen = BatchNormModes.instances[-1].seen
    assert {s for s in seen if s[0] == 0} == {(0, False, True)}  # frozen: eval-mode BatchNorm
    assert {s for s in seen if s[0] == 1} == {(1, True, False)}  # unfrozen: trained, batch statistics


class CrashAt(pl.Callback):
    """Test-only: raises at the start of epoch ``epoch`` while ``armed`` (a crash the run is resumed from)."""

    armed = False

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if CrashAt.armed and trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def test_a_run_resumed_after_the_unfreeze_epoch_trains_the_backbone(tmp_path):
    BatchNormModes.instances.clear()
    spies = [
        "+callbacks.bn._target_=tests.train.test_callbacks.BatchNormModes",
        "+callbacks.crash._target_=tests.train.test_callbacks.CrashAt",
        "+callbacks.crash.epoch=2",
        "trainer.max_epochs=3",
        "finetune.unfreeze_at_epoch=1",
    ]
    CrashAt.armed = True
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            _train(tmp_path, *spies)
    finally:
        CrashAt.armed = False
    _train(tmp_path, *spies, "resume=true")
    seen = BatchNormModes.instances[-1].seen
    assert seen and set(seen) == {(2, True, False)}  # the resumed epoch 2: unfrozen, BatchNorm training
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert ckpt["epoch"] == 2 and len(ckpt["optimizer_states"][0]["param_groups"]) == 2


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch, caplog):
    """ENOSPC in the middle of writing a checkpoint: no *.tmp left, best.ckpt as it was, one line, exit 2."""
    from lightning_fabric.plugins.io import torch_io

    real, calls, kept = torch_io._atomic_save, [], {}

    def full_disk(checkpoint: dict, filepath) -> None:
        calls.append(Path(filepath))
        if len(calls) <= 2:  # epoch 0 writes best.ckpt and last.ckpt; epoch 1's first write meets a full disk
            return real(checkpoint, filepath)
        kept["best"] = (Path(filepath).parent / "best.ckpt").read_bytes()
        Path(filepath).write_bytes(b"PK\x03\x04 the first part of a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch_io, "_atomic_save", full_disk)
    cfg = compose_cfg(
        "train", [f"data.root={tmp_path / 'syn'}", "data.options.n_per_class=10", "data.options.size=48", *TINY]
    )
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        run_safely(train, cfg, run)
    assert exc.value.code == 2 and len(calls) == 3
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert errors[0].startswith(f"WriteError: Could not write {calls[2].with_suffix('')}: No space left on device")
    failed = calls[2].with_suffix("").name  # best or last.ckpt: the previous one is kept
    resume = f"the previous {failed} is kept; free space, then resume=true hydra.run.dir={run} continues from its last"
    assert errors[0].endswith(f"{resume}.ckpt")
    assert not list(run.rglob("*.tmp"))
    best = run / "checkpoints" / "best.ckpt"
    assert best.read_bytes() == kept["best"] and read_checkpoint(best)["epoch"] == 0


def test_a_full_disk_at_the_first_checkpoint_does_not_advise_resuming(tmp_path, monkeypatch, caplog):
    """Nothing to resume from yet: resume=true would only start afresh, so the line says to start again."""
    from lightning_fabric.plugins.io import torch_io

    def full_disk(checkpoint: dict, filepath) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch_io, "_atomic_save", full_disk)
    cfg = compose_cfg(
        "train", [f"data.root={tmp_path / 'syn'}", "data.options.n_per_class=10", "data.options.size=48", *TINY]
    )
    with pytest.raises(SystemExit) as exc:
        run_safely(train, cfg, tmp_path / "run")
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert exc.value.code == 2 and len(errors) == 1 and "resume=" not in errors[0], errors
    assert errors[0].endswith(
        "best.ckpt: No space left on device; no best.ckpt was written and there is no last.ckpt to resume from; "
        "free space, then start the run again"
    )


AGAIN = "and there is no last.ckpt to resume from; free space, then start the run again"
RESUME = "; free space, then resume=true hydra.run.dir={run} continues from its last.ckpt"


@pytest.mark.parametrize(
    "failed, existing, advice",
    [
        ("best.ckpt", [], f"no best.ckpt was written {AGAIN}"),
        ("last.ckpt", ["best.ckpt"], f"no last.ckpt was written {AGAIN}"),  # epoch 0: best.ckpt saved, last.ckpt not
        ("best.ckpt", ["best.ckpt"], f"the previous best.ckpt is kept {AGAIN}"),
        ("best.ckpt", ["best.ckpt", "last.ckpt"], f"the previous best.ckpt is kept{RESUME}"),
        ("last.ckpt", ["best.ckpt", "last.ckpt"], f"the previous last.ckpt is kept{RESUME}"),
    ],
)
def test_a_failed_checkpoint_write_advises_only_what_can_work(tmp_path, failed, existing, advice):
    from lungnet.train.callbacks import after_failed_write

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name in existing:
        (folder / name).write_bytes(b"x")
    assert after_failed_write(folder / failed) == advice.format(run=tmp_path)


def test_metrics_csv_keeps_one_line_ending_across_a_resume(tmp_path):
    """Lightning writes metrics.csv with CRLF; the rows a resume keeps are written the same way."""
    from lungnet.train.loggers import _ContinuingWriter

    fresh = _ContinuingWriter(str(tmp_path), None)
    for step in range(4):
        fresh.log_metrics({"epoch": step // 2, "train/loss": 1.0 / (step + 1)}, step)
    fresh.save()
    resumed = _ContinuingWriter(str(tmp_path), (1, 2))  # a checkpoint at the end of epoch 0
    resumed.log_metrics({"epoch": 1, "train/loss": 0.1}, 2)
    resumed.save()
    data = (tmp_path / "metrics.csv").read_bytes()
    assert data.count(b"\r\n") == data.count(b"\n") == 4  # header, 2 kept rows, 1 new row: CRLF everywhere
    assert pd.read_csv(tmp_path / "metrics.csv")["step"].tolist() == [0, 1, 2]


def test_mixup_trains_on_soft_targets_and_is_recorded_in_the_checkpoint(tmp_path, monkeypatch):
    from lungnet.train.module import LitClassifier

    seen, loss = [], LitClassifier.loss

    def spy(self, logits, target):
        seen.append((self.training, target.is_floating_point() and target.dim() == 2))
        return loss(self, logits, target)

    monkeypatch.setattr(LitClassifier, "loss", spy)
    run, results = _train(tmp_path, "mixup.mixup_alpha=0.4", "mixup.cutmix_alpha=1.0")
    assert {soft for training, soft in seen if training} == {True}  # every training batch: soft targets
    assert {soft for training, soft in seen if not training} == {False}  # validation: the true labels
    assert 0.0 <= results["val"]["accuracy"] <= 1.0
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["hyper_parameters"]["mixup"]["cutmix_alpha"] == 1.0


def test_the_average_lives_on_the_models_device():
    """Lightning builds the average at setup, before the model is moved: it follows the model at fit start."""
    from lungnet.train.callbacks import WeightEMA

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(3, 2)

    module, callback = Tiny(), WeightEMA(0.5)
    callback.setup(None, module, "fit")
    module.to("meta")  # where a strategy would put it (a GPU); "meta" stands in on a CPU-only machine
    callback.on_fit_start(None, module)
    assert {p.device.type for p in callback._average_model.parameters()} == {"meta"}


def test_the_sample_grid_draws_every_class_in_turn():
    from lungnet.train.callbacks import stratified_sample

    targets = np.array([0] * 50 + [1] * 5 + [2] * 3)  # sorted by class, as a folder data set is
    picked = stratified_sample(targets, 8, seed=1, multilabel=False)
    assert len(picked) == len(set(picked)) == 8
    assert sorted(np.bincount(targets[picked], minlength=3).tolist()) == [2, 3, 3]  # was 8 of class 0
    assert picked == stratified_sample(targets, 8, seed=1, multilabel=False)  # the same images every epoch
    assert picked != stratified_sample(targets, 8, seed=2, multilabel=False)
    assert len(stratified_sample(targets[:4], 8, seed=1, multilabel=False)) == 4  # fewer images than asked
    findings = np.array([[0, 0], [0, 0], [0, 0], [1, np.nan], [0, 1], [np.nan, 0]], dtype=float)
    groups = {
        0 if findings[i, 0] == 1 else 1 if findings[i, 1] == 1 else -1
        for i in stratified_sample(findings, 3, seed=0, multilabel=True)
    }
    assert groups == {-1, 0, 1}  # no finding, first finding, second finding


def test_the_confusion_title_says_which_images_and_which_epoch():
    from lungnet.train.callbacks import confusion_title

    assert confusion_title(120, 120, 5) == "Validation split (120 images), epoch 5 (counted from 0)"
    assert confusion_title(256, 5000, 0) == "Validation: 256 of 5000 images, evenly spaced, epoch 0 (counted from 0)"
