"""A diverged run stops in one line and leaves no checkpoint, metrics.json or decision file of its weights."""

from __future__ import annotations

import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch

from lungnet.artifacts.checkpoint import read_checkpoint
from lungnet.commands.wrapper import run_safely
from lungnet.errors import TrainingDiverged
from lungnet.train.divergence import StopOnDivergence, refuse_non_finite_weights
from lungnet.train.training import train
from tests.conftest import TINY, compose_cfg

RUN = [*TINY, "log_figures_every=100", "trainer.max_epochs=2", "optimizer=sgd", "data.options.n_per_class=10"]


def _refused(tmp_path, caplog, *overrides) -> tuple[str, Path]:
    """Trains on tiny synthetic data through `run_safely`; returns the one error line and the run directory."""
    cfg = compose_cfg("train", [f"data.root={tmp_path / 'syn'}", "data.options.size=48", *RUN, *overrides])
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        run_safely(train, cfg, run)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert exc.value.code == 2 and len(errors) == 1 and "\n" not in errors[0], errors
    assert not (run / "metrics.json").exists() and not list(run.rglob("*.decision.json"))
    assert not list(run.rglob("*.tmp"))
    return errors[0], run


@pytest.mark.parametrize(
    "overrides, what, lr",
    [
        (["optimizer.lr=1e12", "divergence.max_loss=1e38"], r"the training loss \(batch \d\) is (nan|inf)", "1e+12"),
        (["optimizer.lr=100"], r"the training loss \(batch \d\) is \S+ \(above divergence.max_loss=10000\)", "100"),
    ],
)
def test_a_diverging_training_loss_stops_the_run_before_any_checkpoint(tmp_path, caplog, overrides, what, lr):
    line, run = _refused(tmp_path, caplog, *overrides)
    assert line.startswith("TrainingDiverged: Training diverged: ")
    assert re.search(what + r" at epoch 0, step \d+; ", line), line
    assert f"a lower optimizer.lr (now {lr})" in line and "trainer.gradient_clip_val=1.0" in line
    assert not (run / "checkpoints").exists()


def test_no_checkpoint_with_non_finite_weights_is_written_without_the_callback(tmp_path, caplog):
    """callbacks.divergence=null: the checkpoint itself refuses the NaN weights at the end of the epoch."""
    line, run = _refused(tmp_path, caplog, "optimizer.lr=1e12", "callbacks.divergence=null")
    assert "a weight tensor is not finite" in line and "at epoch 0" in line, line
    assert not list(run.rglob("*.ckpt"))


class PoisonAt(pl.Callback):
    """Test-only: turns one weight into NaN at the first batch of epoch ``epoch`` (a run that diverges late)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == 0:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = math.nan


def test_a_late_divergence_keeps_the_earlier_finite_checkpoint_and_says_so(tmp_path, caplog):
    poison = ["+callbacks.poison._target_=tests.train.test_divergence.PoisonAt", "+callbacks.poison.epoch=1"]
    line, run = _refused(tmp_path, caplog, "optimizer.lr=0.01", *poison)
    best = run / "checkpoints" / "best.ckpt"
    assert "the training loss (batch 0) is nan at epoch 1" in line and f"{best} holds an earlier epoch's" in line
    ckpt = read_checkpoint(best)
    assert ckpt["epoch"] == 0 and all(v.isfinite().all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def _trainer(**facts) -> SimpleNamespace:
    """The parts of a Trainer the callback reads."""
    strategy = SimpleNamespace(reduce_boolean_decision=lambda decision, all: decision)
    base = dict(current_epoch=3, global_step=40, checkpoint_callback=None, optimizers=[], gradient_clip_val=0.5)
    base.update(precision="bf16-mixed", strategy=strategy, sanity_checking=False)
    return SimpleNamespace(**{**base, **facts})


@pytest.mark.parametrize(
    "value, stops",
    [(math.nan, True), (math.inf, True), (-math.inf, True), (1e4 + 1, True), (1e4, False), (0.7, False), (0.0, False)],
)
def test_the_loss_limits_of_training_steps_and_validation(value, stops):
    callback, trainer = StopOnDivergence(max_loss=1e4), _trainer(callback_metrics={"val/loss": torch.tensor(value)})
    for check in (
        lambda: callback.on_train_batch_end(trainer, None, {"loss": torch.tensor(value)}, None, 7),
        lambda: callback.on_validation_end(trainer, None),
    ):
        if stops:
            with pytest.raises(TrainingDiverged, match=r"at epoch 3, step 40; .*full precision \(trainer.precision"):
                check()
        else:
            check()


def test_the_advice_leaves_out_what_the_run_already_does():
    trainer = _trainer(callback_metrics={"val/loss": torch.tensor(math.nan)}, precision="32-true")
    with pytest.raises(TrainingDiverged) as exc:
        StopOnDivergence(max_loss=1e4).on_validation_end(trainer, None)
    assert "gradient_clip_val" not in str(exc.value) and "trainer.precision" not in str(exc.value)
    assert "the validation loss is nan" in str(exc.value)


def test_the_sanity_check_is_not_judged():
    trainer = _trainer(callback_metrics={"val/loss": torch.tensor(math.nan)}, sanity_checking=True)
    StopOnDivergence(max_loss=1e4).on_validation_end(trainer, None)


@pytest.mark.parametrize("key", ["state_dict", "current_model_state"])
def test_a_checkpoint_with_a_non_finite_tensor_is_refused(key):
    good = {"a.weight": torch.ones(2), "a.num_batches_tracked": torch.tensor(3)}
    checkpoint = {"state_dict": dict(good), "current_model_state": dict(good)}
    refuse_non_finite_weights(_trainer(), checkpoint)
    checkpoint[key]["b.bias"] = torch.tensor([0.0, math.inf])
    with pytest.raises(TrainingDiverged, match=r"a weight tensor is not finite \(b.bias\)"):
        refuse_non_finite_weights(_trainer(), checkpoint)
