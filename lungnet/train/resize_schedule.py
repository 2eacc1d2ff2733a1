"""Progressive resizing: the first epochs train on smaller copies of each batch, growing to the full input size.

Small early epochs cost less (convolution time grows with the pixel count), so a schedule can run more
epochs for the same time; the last epochs, every validation and the saved model see the full size.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch.nn.functional as F

log = logging.getLogger(__name__)


def scheduled_size(epoch: int, full: int, start: int, epochs: int, multiple: int = 32) -> int:
    """The training input size of ``epoch``: ``start`` at epoch 0, rising linearly towards ``full``, which epochs
    ``epochs`` and later use; sizes below ``full`` are rounded down to a multiple of ``multiple`` (not below it).

    Args:
        epoch: the 0-based training epoch.
        full: the batch's own (full) size in px.
        start: the size of epoch 0.
        epochs: how many epochs train below the full size; 0: none.
        multiple: the rounding step (32: the stride of the presets' backbones).

    Returns:
        The side in px, never above ``full``.
    """
    if epoch >= epochs or start >= full:
        return full
    size = start + (full - start) * epoch / epochs
    return min(full, max(multiple, int(size) // multiple * multiple))


class ProgressiveResize(pl.Callback):
    """Downsizes each training batch (bilinear, antialiased) to the epoch's `scheduled_size`.

    The data pipeline still produces the full size (augmentation, crops and caches are unchanged); validation,
    checkpoints and inference never see the small sizes. The size of each epoch is logged as
    ``train/image_size``. Stateless: a resumed run uses the sizes of its epochs. The backbone must accept any input
    size (the CNNs do; a fixed-size vision transformer does not).

    Args:
        start_size: the side of epoch 0 in px.
        epochs: how many first epochs train below the full size (``progressive_resize.epochs``; 0 turns it off).
    """

    def __init__(self, start_size: int, epochs: int) -> None:
        if epochs < 1:
            raise ValueError(f"progressive_resize.epochs must be >= 1, got {epochs} (0 turns it off in the config)")
        if start_size < 8:
            raise ValueError(f"progressive_resize.start_size must be >= 8 px, got {start_size}")
        self.start_size, self.epochs = int(start_size), int(epochs)
        self._logged_epoch = -1

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        images = batch["image"]
        height, width = images.shape[-2:]
        side = min(height, width)
        size = scheduled_size(trainer.current_epoch, side, self.start_size, self.epochs)
        if self._logged_epoch != trainer.current_epoch:  # once per epoch: the size is the same for every batch
            self._logged_epoch = trainer.current_epoch
            pl_module.log("train/image_size", float(size), on_step=False, on_epoch=True, batch_size=1, sync_dist=True)
            if trainer.is_global_zero and trainer.current_epoch <= self.epochs:
                note = "" if size < side else ", the full size from now on"
                log.info("Epoch %d trains at %d px (progressive_resize%s)", trainer.current_epoch, size, note)
        if size < side:
            shape = (round(height * size / side), round(width * size / side))
            batch["image"] = F.interpolate(images, size=shape, mode="bilinear", antialias=True, align_corners=False)
