"""Training callbacks: fine-tuning schedule, weight EMA and SWA, figures, atomic checkpoints, exact resume.

`AtomicCheckpoint` writes every checkpoint (``best`` and ``last``) to a temporary file and renames it, never one
with non-finite weights (`lungnet.train.divergence`).
`EpochSeeder` makes the global RNGs (dropout and anything else drawing from them) a function of
(seed, epoch, rank), so a resumed run draws what an uninterrupted one would (the CSV log that continues with it:
`lungnet.train.loggers.ResumableCSVLogger`).
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from weakref import proxy

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning.callbacks import BaseFinetuning, ModelCheckpoint  # noqa: E402
from pytorch_lightning.callbacks.weight_averaging import EMAWeightAveraging, WeightAveraging  # noqa: E402
from pytorch_lightning.loggers import TensorBoardLogger  # noqa: E402

from lungnet.data.dataset import derive_seed  # noqa: E402
from lungnet.errors import WriteError  # noqa: E402
from lungnet.scoring.plots import confusion_figure  # noqa: E402
from lungnet.train.divergence import refuse_non_finite_weights  # noqa: E402

log = logging.getLogger(__name__)


class FreezeUnfreeze(BaseFinetuning):
    """Trains the head alone for ``unfreeze_at_epoch`` epochs, then the backbone at ``lr * unfreeze_lr_mult``.

    Args:
        unfreeze_at_epoch: first epoch that trains the backbone.
        unfreeze_lr_mult: backbone learning rate as a fraction of the head's current one.
        train_bn: keep BatchNorm layers trainable while frozen.
    """

    def __init__(self, unfreeze_at_epoch: int = 1, unfreeze_lr_mult: float = 0.1, train_bn: bool = False) -> None:
        super().__init__()
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.unfreeze_lr_mult = unfreeze_lr_mult
        self.train_bn = train_bn

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        self.freeze(pl_module.model.backbone, train_bn=self.train_bn)

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer) -> None:
        backbone = pl_module.model.backbone
        if epoch == self.unfreeze_at_epoch:
            lr = optimizer.param_groups[0]["lr"] * self.unfreeze_lr_mult
            log.info("Epoch %d: unfreezing the backbone at lr %.2e", epoch, lr)
            self.unfreeze_and_add_param_group(backbone, optimizer, lr=lr, train_bn=True, initial_denom_lr=1.0)
            backbone.train()  # its BatchNorm layers were held in eval mode while frozen
        elif epoch > self.unfreeze_at_epoch and not all(p.requires_grad for p in backbone.parameters()):
            # resumed after the unfreeze epoch: Lightning's setup froze the backbone again and on_fit_start put its
            # parameter group (with its saved learning rate) back into the optimiser
            log.info("Epoch %d: resumed after epoch %d, the backbone trains again", epoch, self.unfreeze_at_epoch)
            self.make_trainable(backbone)
            backbone.train()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._hold_frozen_batchnorm(trainer, pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._hold_frozen_batchnorm(trainer, pl_module)

    def _hold_frozen_batchnorm(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """While the backbone is frozen its BatchNorm layers normalise with their pretrained running statistics.

        Lightning's freeze (``track_running_stats=False``) leaves them in training mode, where they normalise
        each training batch with its own statistics, while validation (eval mode) uses the running ones: the
        head would learn features it never sees at validation (darkcovidnet_best scored val AUROC ~0.47 after
        its frozen epoch; a linear probe on the same frozen features scores 0.93).
        """
        if self.train_bn or trainer.current_epoch >= self.unfreeze_at_epoch:
            return
        for module in pl_module.model.backbone.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


class _ScoresTheAverage:
    """Validation, checkpoints and the model left after training use the average once it has had an update.

    Lightning's `WeightAveraging` does the averaging: ``best.ckpt``/``last.ckpt`` hold the average as their
    ``state_dict`` and the live weights as ``current_model_state``, so a resumed run continues both. Before the
    first update the average is only the untrained starting point, so until then validation and checkpoints use
    the live weights (Lightning's callback would validate the starting point).
    """

    _swapped = False

    def _updated(self) -> bool:
        return self._average_model is not None and int(self._average_model.n_averaged) > 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        if self._device is None and self._average_model is not None:  # setup ran before the model reached its
            self._average_model.to(pl_module.device)  # device: keep the average beside it (no copy to CPU per step)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swapped = self._updated()
        if self._swapped:
            self._swap_models(pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._swapped:
            self._swap_models(pl_module)
            self._swapped = False

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._updated():
            self._copy_average_to_current(pl_module)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if self._updated():
            super().on_save_checkpoint(trainer, pl_module, checkpoint)


class WeightEMA(_ScoresTheAverage, EMAWeightAveraging):
    """Exponential moving average of the weights, updated after every optimizer step from ``start_epoch`` on.

    Args:
        decay: weight of the old average at each step (0.98 forgets with a half-life of ~34 steps).
        start_epoch: first epoch whose steps update the average (skips the noisy first steps).
    """

    def __init__(self, decay: float, start_epoch: int = 0) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema.decay must be in (0, 1), got {decay} (0 turns EMA off in the config)")
        super().__init__(decay=decay)
        self.start_epoch = int(start_epoch)
        self._epoch = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch = trainer.current_epoch

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and self._epoch >= self.start_epoch


class WeightSWA(_ScoresTheAverage, WeightAveraging):
    """Stochastic weight averaging: the equal-weight mean of the weights at the end of each of the last ``epochs``.

    The snapshot is taken after the epoch's last training batch, before its validation, so the epoch's
    validation, its checkpoints and the final model all include it. BatchNorm running statistics are averaged
    with the weights (``use_buffers=True``) rather than recomputed by an extra pass over the training data.

    Args:
        epochs: how many final epochs are averaged (counted back from ``trainer.max_epochs``).
    """

    def __init__(self, epochs: int) -> None:
        if epochs < 1:
            raise ValueError(f"swa.epochs must be >= 1, got {epochs} (0 turns SWA off in the config)")
        super().__init__(use_buffers=True)
        self.epochs = int(epochs)
        self._due = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.max_epochs is None or trainer.max_epochs < self.epochs:
            raise ValueError(f"swa.epochs={self.epochs} needs trainer.max_epochs >= {self.epochs}")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int):
        first = trainer.max_epochs - self.epochs
        self._due = trainer.current_epoch >= first and batch_idx + 1 == trainer.num_training_batches
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and self._due

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._updated():
            log.warning(
                "swa.epochs=%d: training stopped at epoch %d, before the averaged epochs (from %d); the model is the "
                "live weights",
                self.epochs,
                trainer.current_epoch,
                trainer.max_epochs - self.epochs,
            )
        super().on_train_end(trainer, pl_module)


class AtomicCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that writes to a temporary file and renames it, so a crash never leaves a torn file.

    Both the monitored checkpoint and ``last.ckpt`` (``save_last=True``) go through `_save_checkpoint`.
    Lightning 2.6 refreshes ``last.ckpt`` only in epochs that also save a top-k checkpoint (an epoch
    that does not improve the monitored metric leaves an old ``last.ckpt``); this one refreshes it
    after every epoch, so a resumed run loses at most the epoch it was killed in.
    """

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        due = not self._should_skip_saving_checkpoint(trainer) and not self._should_save_on_train_epoch_end(trainer)
        super().on_validation_end(trainer, pl_module)
        if due:
            self._refresh_last(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        due = not self._should_skip_saving_checkpoint(trainer) and self._should_save_on_train_epoch_end(trainer)
        super().on_train_epoch_end(trainer, pl_module)
        if due:
            self._refresh_last(trainer)

    def _refresh_last(self, trainer: pl.Trainer) -> None:
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        refuse_non_finite_weights(trainer, checkpoint)  # the last hook before the write (checkpoints run last)

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        tmp = f"{filepath}.tmp"
        try:
            trainer.save_checkpoint(tmp, self.save_weights_only)
            if trainer.is_global_zero:
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
                os.replace(tmp, filepath)
        except OSError as exc:  # a full disk, a lost mount: no torn temporary, the previous file stays
            if trainer.is_global_zero:
                Path(tmp).unlink(missing_ok=True)
            raise WriteError.of(filepath, exc, after_failed_write(Path(filepath))) from exc
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))


def after_failed_write(filepath: Path) -> str:
    """What a failed checkpoint write leaves and what can follow: resume=true only with a last.ckpt to resume."""
    kept = f"the previous {filepath.name} is kept" if filepath.is_file() else f"no {filepath.name} was written"
    run_dir = filepath.parent.parent  # resume=true continues <run dir>/checkpoints/last.ckpt, or starts afresh
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        return f"{kept}; free space, then resume=true hydra.run.dir={run_dir} continues from its last.ckpt"
    return f"{kept} and there is no last.ckpt to resume from; free space, then start the run again"


class EpochSeeder(pl.Callback):
    """Re-seeds torch, numpy and ``random`` at the start of every training epoch from (seed, epoch, rank).

    Data order and augmentation are keyed by (seed, epoch, index) already (`lungnet.data.dataset`);
    this covers the rest (dropout, stochastic layers), so no RNG state needs restoring on resume.

    Args:
        seed: the run seed.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = derive_seed(self.seed, trainer.current_epoch, trainer.global_rank, 0xE90C)
        torch.manual_seed(value)
        np.random.seed(value)
        random.seed(value)


class FigureLogger(pl.Callback):
    """Logs a confusion matrix and a grid of sample predictions to TensorBoard after validation.

    The sample grid shows the same ``n_samples`` validation images every epoch, drawn per class in turn (seeded;
    multi-label: per first positive finding, images without one as a group of their own), so every class appears.
    The confusion matrix counts the whole validation split up to 256 images (evenly spaced beyond), and its title
    says which. Epochs are counted from 0, as in history.csv, curves.png and TensorBoard's step axis.

    Args:
        every_n_epochs: how often.
        n_samples: images in the sample grid.
        seed: the draw of the sample images.
    """

    MAX_CONFUSION = 256

    def __init__(self, every_n_epochs: int, seed: int, n_samples: int = 8) -> None:
        self.every_n_epochs = every_n_epochs
        self.n_samples = n_samples
        self.seed = int(seed)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.current_epoch % self.every_n_epochs:
            return
        board = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if board is None:  # figures go to TensorBoard only
            return
        dm = trainer.datamodule
        if dm is None or "val" not in dm.datasets:
            return
        ds, step = dm.datasets["val"], trainer.current_epoch
        spread = np.linspace(0, len(ds) - 1, min(len(ds), self.MAX_CONFUSION)).astype(int)
        if not pl_module.multilabel:
            _, probs, batch = self._predict(pl_module, ds, spread)
            targets = torch.stack([b["target"] for b in batch])
            cm = np.zeros((len(pl_module.labels), len(pl_module.labels)), dtype=int)
            np.add.at(cm, (targets.numpy(), probs.argmax(1).numpy()), 1)
            title = confusion_title(len(spread), len(ds), step)
            board.experiment.add_figure("val/confusion_matrix", confusion_figure(cm, pl_module.labels, title), step)
        picked = stratified_sample(ds.targets.numpy(), self.n_samples, self.seed, pl_module.multilabel)
        x, probs, batch = self._predict(pl_module, ds, picked)
        grid = self._samples(x.cpu(), probs, batch, pl_module.labels, pl_module.multilabel)
        board.experiment.add_figure("val/samples", grid, step)

    @staticmethod
    def _predict(pl_module: pl.LightningModule, ds, indices) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
        batch = [ds[int(i)] for i in indices]
        x = torch.stack([b["image"] for b in batch]).to(pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            probs = pl_module.probabilities(pl_module(x).float()).cpu()
        pl_module.train(was_training)
        return x, probs, batch

    def _samples(self, x, probs, batch, labels, multilabel) -> plt.Figure:
        n = min(self.n_samples, len(x))
        cols = min(4, n)
        rows = (n + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.3 * rows), squeeze=False)
        for k, ax in enumerate(axes.flat):
            ax.axis("off")
            if k >= n:
                continue
            img = x[k, 0].numpy()
            ax.imshow(img, cmap="gray")
            pred = int(probs[k].argmax())
            if multilabel:
                title = f"top: {labels[pred]} {probs[k, pred]:.2f}"
                color = "black"
            else:
                true = int(batch[k]["target"])
                title = f"pred {labels[pred]} {probs[k, pred]:.2f}\ntrue {labels[true]}"
                color = "green" if pred == true else "red"
            ax.set_title(title, fontsize=9, color=color)
        fig.tight_layout()
        return fig


def confusion_title(counted: int, total: int, epoch: int) -> str:
    """The training-time confusion matrix's title: the whole validation split or how much of it, and the epoch."""
    if counted == total:
        return f"Validation split ({total} images), epoch {epoch} (counted from 0)"
    return f"Validation: {counted} of {total} images, evenly spaced, epoch {epoch} (counted from 0)"


def stratified_sample(targets: np.ndarray, n: int, seed: int, multilabel: bool) -> list[int]:
    """Up to ``n`` indices, drawn from each class in turn (seeded), so that every class shows.

    Args:
        targets: class indices, or (multi-label) a 0/1/NaN matrix; images are then grouped by their first positive
            finding, and those without one form a group of their own.
        n: how many.
        seed: the draw.
        multilabel: the layout of ``targets``.
    """
    if multilabel:
        positive = np.nan_to_num(targets, nan=0.0) > 0.5
        groups = np.where(positive.any(1), positive.argmax(1), -1)
    else:
        groups = np.asarray(targets)
    rng = np.random.default_rng(seed)
    queues = [list(rng.permutation(np.flatnonzero(groups == g))) for g in np.unique(groups)]
    picked = []
    while len(picked) < min(n, len(groups)):
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(int(queue.pop()))
    return picked
