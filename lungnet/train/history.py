"""lungnet's own per-epoch record of a training run: ``history.csv`` in the run directory, whatever the loggers.

`EpochHistory` writes one row per epoch, epochs counted from 0 (the numbering Lightning, TensorBoard's step axis,
the confusion matrices, ``curves.png`` and the logs all use): the global step at the epoch's end, every epoch-level
``train/*`` and ``val/*`` value the module logged (``val/*`` only in epochs that validated) and the learning rate of
each parameter group (``lr/<group>``). ``curves.png`` is drawn from it (`lungnet.train.curves`), so a run with
``logger=mlflow``, ``wandb`` or ``none`` gets its curves too. A resumed run keeps the rows of the epochs its
checkpoint covers. `read_history` reads the file back with every value type-checked (a file from an earlier run is
untrusted input).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl

from lungnet.io import write_csv

log = logging.getLogger(__name__)

HISTORY = "history.csv"
PREFIXES = ("train/", "val/")
KINDS = ("epoch", "step", *PREFIXES, "other")  # the column order: epoch, step, train/*, val/*, lr/*


def epoch_values(metrics: dict) -> dict[str, float]:
    """The epoch-level ``train/*`` and ``val/*`` numbers of Lightning's ``callback_metrics``: a value logged per step
    and per epoch keeps its ``_epoch`` name (``train/loss_epoch``), its ``_step`` and plain twins are dropped."""
    out = {}
    for key, value in metrics.items():
        if not key.startswith(PREFIXES) or key.endswith("_step") or f"{key}_epoch" in metrics:
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):  # a tensor with more than one element, a string: not a curve
            continue
        if math.isfinite(number):
            out[key] = number
    return out


def learning_rates(trainer: pl.Trainer) -> dict[str, float]:
    """``{"lr/<group name>": lr}`` of the first optimiser (``lr/group<k>`` for an unnamed group)."""
    if not trainer.optimizers:
        return {}
    groups = trainer.optimizers[0].param_groups
    return {f"lr/{g.get('name') or f'group{k}'}": float(g["lr"]) for k, g in enumerate(groups)}


class EpochHistory(pl.Callback):
    """Writes ``history.csv``: one row per finished epoch (see the module docstring).

    The row of epoch ``e`` is written at its end, as soon as the loss is reduced, and completed when epoch ``e + 1``
    starts or training ends: the module's own epoch-end values (``train/acc``, ``train/auroc``) come after a
    callback's ``on_train_epoch_end``. A run killed in between keeps the row without them. Every rank reads the
    metrics, as the checkpoint callback does (a value reduced across ranks is computed by all of them); rank 0
    rewrites the file atomically.

    Args:
        path: the CSV file (``<run dir>/history.csv``).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._rows: list[dict] = []
        self._open: dict | None = None  # the row of the epoch in progress, until it is complete
        self._validated: int | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        start = int(trainer.current_epoch)
        kept = read_history(self.path) if start > 0 and trainer.is_global_zero else None
        self._rows = [] if kept is None else kept[kept["epoch"] < start].to_dict("records")
        if start > 0:
            log.info("%s: kept %d rows of the epochs before epoch %d", self.path, len(self._rows), start)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._complete(trainer)
        self._open = {"epoch": int(trainer.current_epoch), "step": None, **learning_rates(trainer)}

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated = int(trainer.current_epoch)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._open is not None and not trainer.fast_dev_run:
            self._rows.append(self._open)
            self._update(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._complete(trainer)

    def _complete(self, trainer: pl.Trainer) -> None:
        """Completes the row of the epoch that ended (none when it stopped inside itself)."""
        if self._open is not None and self._rows and self._rows[-1] is self._open:
            self._update(trainer)
        self._open = None

    def _update(self, trainer: pl.Trainer) -> None:
        row = self._open
        values = epoch_values(dict(trainer.callback_metrics))
        if self._validated != row["epoch"]:  # val/* of an earlier epoch: this one did not validate
            values = {k: v for k, v in values.items() if not k.startswith("val/")}
        row.update(values, step=int(trainer.global_step))
        if trainer.is_global_zero:
            frame = pd.DataFrame(self._rows)
            order = sorted(frame.columns, key=lambda c: (KINDS.index(_kind(c)), c))
            write_csv(self.path, frame[order])


def _kind(column: str) -> str:
    return column if column in ("epoch", "step") else next((p for p in PREFIXES if column.startswith(p)), "other")


def read_history(path: str | os.PathLike) -> pd.DataFrame | None:
    """``history.csv`` as one row per epoch, sorted; None when there is none.

    Every value is read as a number: a non-numeric cell becomes empty, a row without a whole, non-negative epoch is
    dropped (with a warning), and a repeated epoch keeps its last row.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        log.warning("%s cannot be read (%s): ignored", path, exc)
        return None
    if "epoch" not in frame.columns:
        log.warning("%s has no 'epoch' column: ignored", path)
        return None
    frame = frame.apply(pd.to_numeric, errors="coerce").replace([np.inf, -np.inf], np.nan)
    epoch = frame["epoch"]
    good = epoch.notna() & (epoch >= 0) & (epoch == epoch.round())
    if not good.all():
        log.warning("%s: dropped %d row(s) without a whole, non-negative epoch", path, int((~good).sum()))
    frame = frame[good].astype({"epoch": int})
    return frame.drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)
