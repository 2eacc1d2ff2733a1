"""The validation passes' outputs, kept for the finish after training (issue #27 §3: reuse what was computed).

During each full validation pass of ``trainer.fit`` the module also returns the OOD gate's inputs
(`lungnet.train.module.LitClassifier.validation_step`); `ValidationOutputs` collects them (gathered on rank 0 after
a multi-process training) and keeps two passes: the last one, and the one with the best monitored value so far.
After training, `reusable_val` returns the kept pass whose logits on val's first batch equal the selected
checkpoint's own (one batch scored again), so `lungnet.train.finish.finish` scores val no second time. A pass that
does not match (weights averaged after it (SWA), a 16-bit validation pass, a partial pass) is not used: val is scored
again, as before.

Growth: the kept passes hold (N_val, classes + features) float32 arrays, two at most, plus the running pass.
"""

from __future__ import annotations

import logging

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch.utils.data import default_collate

from lungnet.data.preprocessing import logits_to_probs
from lungnet.scoring.outputs import Outputs, model_outputs

log = logging.getLogger(__name__)

# the largest difference of a logit (absolute, and relative to its size) between the kept pass and the checkpoint's
# own outputs on val's first batch that still counts as the same model: float32 with another batch order or kernel
MATCH_TOLERANCE = 1e-4


def assemble(parts: list[tuple], n: int, multilabel: bool) -> Outputs | None:
    """One split's outputs in the data set's order from a pass's batches (several ranks' batches, in any order,
    with the distributed sampler's repeated padding images).

    Args:
        parts: ``(indices, logits, features, targets, paths)`` per batch.
        n: the number of images of the split.
        multilabel: sigmoid rather than softmax probabilities.

    Returns:
        The outputs, or None when the pass did not score every image (``limit_val_batches``).
    """
    if not parts:
        return None
    index = np.concatenate([p[0] for p in parts])
    first, rows = np.unique(index, return_index=True)  # sorted by the data set's index; a repeat counts once
    if len(first) != n or first[0] != 0 or first[-1] != n - 1:
        return None
    logits = np.concatenate([p[1] for p in parts])[rows]
    paths = [path for p in parts for path in p[4]]
    return Outputs(
        "val",
        logits_to_probs(logits, multilabel),
        np.concatenate([p[3] for p in parts])[rows],
        [paths[i] for i in rows],
        logits,
        np.concatenate([p[2] for p in parts])[rows],
    )


class ValidationOutputs(pl.Callback):
    """Keeps the outputs and OOD gate inputs of full validation passes: the last one and the best so far.

    Args:
        monitor: the checkpoint's monitored metric (None: only the last pass is kept, ``checkpoint.select=last``).
        mode: ``max`` or ``min``; a pass is the best when strictly better, as `ModelCheckpoint` decides.
    """

    def __init__(self, monitor: str | None, mode: str) -> None:
        self.monitor, self.mode = monitor, mode
        self.parts: list[tuple] | None = None
        self.last: tuple[int, Outputs] | None = None  # (epoch, outputs)
        self.best: tuple[int, Outputs] | None = None
        self.best_score: float | None = None

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module) -> None:
        keep = not trainer.sanity_checking
        pl_module.keep_val_features = keep
        self.parts = [] if keep else None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.parts is None or not isinstance(outputs, dict):
            return
        self.parts.append(
            (
                batch["index"].cpu().numpy(),
                outputs["logits"].float().cpu().numpy(),
                outputs["features"],
                batch["target"].cpu().numpy(),
                list(batch["path"]),
            )
        )

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        pl_module.keep_val_features = False
        parts, self.parts = self.parts, None
        if parts is None:
            return
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
            dist.gather_object(parts, gathered, dst=0)
            if gathered is None:
                return
            parts = [p for rank in gathered for p in rank]
        out = assemble(parts, len(trainer.datamodule.datasets["val"]), pl_module.multilabel)
        if out is None:
            log.debug("Validation pass at epoch %d was partial: not kept", trainer.current_epoch)
            return
        self.keep(int(trainer.current_epoch), out, trainer.callback_metrics.get(self.monitor) if self.monitor else None)

    def keep(self, epoch: int, out: Outputs, score) -> None:
        """Keeps ``out`` as the last pass, and as the best when ``score`` improves on the best so far."""
        self.last = (epoch, out)
        if score is None:
            return
        value = float(score)
        better = self.best_score is None or (value > self.best_score if self.mode == "max" else value < self.best_score)
        if better and np.isfinite(value):
            self.best, self.best_score = (epoch, out), value

    def candidates(self) -> list[tuple[int, Outputs]]:
        """The kept passes, the best first."""
        kept = [k for k in (self.best, self.last) if k is not None]
        return [k for i, k in enumerate(kept) if all(k[1] is not other[1] for other in kept[:i])]


def reusable_val(kept: ValidationOutputs | None, loaded, dm, device) -> Outputs | None:
    """The kept validation pass computed by the selected checkpoint's weights, or None (val is scored again).

    The checkpoint's outputs on val's first batch (one batch of ``data.batch_size`` images, read in this process)
    are compared with each kept pass's; a pass matches when every logit agrees within `MATCH_TOLERANCE`.

    Args:
        kept: the training's callback (None: nothing kept).
        loaded: the selected checkpoint, loaded.
        dm: training's data module.
        device: where the checkpoint runs.
    """
    candidates = kept.candidates() if kept is not None else []
    if not candidates:
        return None
    dataset = dm.datasets["val"]
    batch = default_collate([dataset[i] for i in range(min(len(dataset), int(dm.cfg["batch_size"])))])
    with torch.no_grad():
        probe = model_outputs(loaded.model, [batch], loaded.multilabel, device, "Checking val outputs", True, "probe")
    k = len(probe.paths)
    gaps = []
    for epoch, out in candidates:
        gap = np.abs(out.logits[:k] - probe.logits) / (1.0 + np.abs(probe.logits))
        gaps.append(float(gap.max()))
        if out.paths[:k] == probe.paths and gaps[-1] <= MATCH_TOLERANCE:
            log.info("Val outputs: reused from the validation pass of epoch %d (the selected checkpoint's)", epoch)
            return out
    log.info(
        "Val outputs: no kept validation pass matches the selected checkpoint (largest logit difference %s; "
        "averaged weights or a 16-bit validation pass): val is scored again",
        ", ".join(f"{g:.2g}" for g in gaps),
    )
    return None
