"""A run that diverged stops, in one line, before anything of it is saved or scored.

`StopOnDivergence` (``conf/callbacks/divergence.yaml``) checks the training loss after every step and the
validation loss after every validation: NaN, infinite or above ``divergence.max_loss`` raises `TrainingDiverged`
naming the epoch and step and what to try. `refuse_non_finite_weights` is the last line behind it, called by
`lungnet.train.callbacks.AtomicCheckpoint` on every checkpoint before a byte is written: weights that are not all finite
never become ``best.ckpt`` or ``last.ckpt`` (so no metrics.json or decision file is made from them either).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytorch_lightning as pl

from lungnet.errors import TrainingDiverged
from lungnet.models.weights import first_non_finite

FULL_PRECISION = ("32-true", "64-true", "32", "64")


def what_to_try(trainer: pl.Trainer) -> str:
    """The settings that can bring a diverging run back, only those not already in use: a lower learning rate,
    gradient clipping, full precision."""
    advice = []
    lr = trainer.optimizers[0].defaults.get("lr") if trainer.optimizers else None  # as configured, before schedules
    advice.append(f"a lower optimizer.lr (now {lr:.3g})" if isinstance(lr, int | float) else "a lower optimizer.lr")
    if not trainer.gradient_clip_val:
        advice.append("gradient clipping (trainer.gradient_clip_val=1.0)")
    if str(trainer.precision) not in FULL_PRECISION:
        advice.append(f"full precision (trainer.precision=32-true instead of {trainer.precision})")
    return "try " + ", or ".join(advice)


def what_is_kept(trainer: pl.Trainer) -> str:
    """The checkpoint of an earlier, finite epoch the run leaves (each was checked when it was written), if any."""
    checkpoint = trainer.checkpoint_callback
    kept = getattr(checkpoint, "best_model_path", "") or getattr(checkpoint, "last_model_path", "")
    return f"; {kept} holds an earlier epoch's weights, not evaluated" if kept and Path(kept).is_file() else ""


def diverged(trainer: pl.Trainer, what: str) -> TrainingDiverged:
    """The one-line error for a run that diverged: ``what`` happened at this epoch and step, what is kept, what to
    try."""
    return TrainingDiverged(
        f"Training diverged: {what} at epoch {trainer.current_epoch}, step {trainer.global_step}; stopped with no "
        f"checkpoint, metrics.json or decision file of it{what_is_kept(trainer)}; {what_to_try(trainer)}"
    )


def refuse_non_finite_weights(trainer: pl.Trainer, checkpoint: dict) -> None:
    """Raises `TrainingDiverged` when the checkpoint about to be written holds a non-finite weight (its
    ``state_dict``, and the live weights kept beside a weight average as ``current_model_state``).

    Raises:
        TrainingDiverged: how many tensors are not finite, with an example name.
    """
    for key in ("state_dict", "current_model_state"):
        state = checkpoint.get(key) or {}
        bad = first_non_finite(state)
        if bad is not None:
            raise diverged(trainer, f"a weight tensor is not finite ({bad})")


class StopOnDivergence(pl.Callback):
    """Stops training with `TrainingDiverged` when a loss is not finite or exceeds ``max_loss``.

    Lightning's ``EarlyStopping(check_finite=True)`` ends such a run quietly (and only when early stopping is on),
    after which the run would be scored and saved as if it had trained; ``detect_anomaly`` finds the first
    NaN in autograd but at a large cost per step and not an exploding finite loss.

    Args:
        max_loss: a training step loss or a validation loss above this counts as diverged (the cross-entropy of
            chance is ln(classes), a few units: a loss in the thousands means saturated, useless logits).
    """

    def __init__(self, max_loss: float) -> None:
        if not max_loss > 0:
            raise ValueError(f"divergence.max_loss must be > 0, got {max_loss}")
        self.max_loss = float(max_loss)

    def _bad(self, value: float) -> bool:
        return not math.isfinite(value) or value > self.max_loss

    def _describe(self, name: str, value: float) -> str:
        above = f" (above divergence.max_loss={self.max_loss:g})" if math.isfinite(value) else ""
        return f"the {name} is {value:.3g}{above}"

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx):
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:  # a skipped step
            return
        value = float(loss.detach())
        # every rank decides together: one rank raising alone would leave the others waiting in their next all-reduce
        if trainer.strategy.reduce_boolean_decision(self._bad(value), all=False):
            raise diverged(trainer, self._describe(f"training loss (batch {batch_idx})", value))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or "val/loss" not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics["val/loss"])  # already reduced across ranks (sync_dist)
        if self._bad(value):
            raise diverged(trainer, self._describe("validation loss", value))
