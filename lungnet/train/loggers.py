"""Loggers from the ``logger`` config group (``conf/logger/``), and the final numbers they record.

Each entry of ``cfg.logger`` with a ``_target_`` becomes one Lightning logger (lightning-hydra-template style).
The hyper-parameters they log are the module's final ones (class weights and data facts included); at the end
of a run `log_final_metrics` adds the selected checkpoint's val/test metrics (TensorBoard's HPARAMS tab shows
them next to the hyper-parameters). `ResumableCSVLogger` flushes every row at once and, on resume, keeps the rows of
the epochs the checkpoint covers.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Mapping

import pytorch_lightning as pl
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers.mlflow import MLFlowLogger as _MLFlowLogger

from lungnet.errors import ConfigError
from lungnet.io import atomic_write

log = logging.getLogger(__name__)

INSTALL = {"mlflow": "pip install 'lungnet[mlflow]'", "wandb": "pip install 'lungnet[wandb]'"}
FINAL_KEYS = ("accuracy", "auroc_macro", "f1_macro", "loss")


class MLFlowLogger(_MLFlowLogger):
    """Lightning's MLflow logger, allowed to write a local file store (``tracking_uri: file:<run dir>/mlruns``).

    MLflow 3 refuses ``file:`` stores unless ``MLFLOW_ALLOW_FILE_STORE`` is set: its recommended SQLite store
    takes ~20 s to create per run on 2 cores and does not suit one store per run directory. A file store is
    still read by ``mlflow ui --backend-store-uri <run dir>/mlruns``.
    """

    def __init__(self, *args, tracking_uri: str | None = None, **kwargs) -> None:
        if tracking_uri and tracking_uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        super().__init__(*args, tracking_uri=tracking_uri, **kwargs)


def build_loggers(cfg: Mapping | None, resume_from: tuple[int, int] | None = None) -> list[Logger]:
    """The loggers configured under ``logger`` (none for ``logger=null``).

    Args:
        cfg: the ``logger`` node: ``{name: {_target_: ..., ...}}``.
        resume_from: (first epoch, global step) of a resumed checkpoint, for loggers that continue a file
            (`ResumableCSVLogger`).

    Raises:
        ConfigError: a logger that cannot be built (unknown class, bad argument, package not installed).
    """
    loggers = []
    for name, spec in (cfg or {}).items():
        if not isinstance(spec, Mapping) or "_target_" not in spec:
            continue
        extra = {"resume_from": resume_from} if str(spec["_target_"]).endswith("ResumableCSVLogger") else {}
        try:
            loggers.append(instantiate(spec, **extra))
        except (InstantiationException, ModuleNotFoundError) as exc:
            cause = exc.__cause__ or exc
            hint = f" ({INSTALL[name]})" if name in INSTALL else ""
            raise ConfigError(f"logger.{name}: cannot build {spec['_target_']}: {_first_line(cause)}{hint}") from exc
    return loggers


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def final_metrics(results: Mapping) -> dict[str, float]:
    """``{"final/<split>_<metric>": value}`` for the headline metrics of each evaluated split."""
    out = {}
    for split in ("val", "test"):
        for key in FINAL_KEYS:
            value = (results.get(split) or {}).get(key)
            if isinstance(value, int | float):
                out[f"final/{split}_{key}"] = float(value)
    return out


def log_final_metrics(trainer: pl.Trainer, hparams: Mapping, results: Mapping) -> None:
    """Records the selected checkpoint's metrics in every logger; TensorBoard shows them in HPARAMS too."""
    metrics = final_metrics(results)
    if not metrics or not trainer.is_global_zero:
        return
    step = int(trainer.global_step)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(dict(hparams), metrics={k: v for k, v in metrics.items()})
        else:
            logger.log_metrics(metrics, step=step)
        logger.save()


class _ContinuingWriter(ExperimentWriter):
    """CSV writer that keeps the rows a resumed checkpoint covers instead of deleting the file."""

    def __init__(self, log_dir: str, keep_before: tuple[int, int] | None) -> None:
        self._keep_before = keep_before
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        path = self.metrics_file_path
        if not os.path.isfile(path):
            return
        if self._keep_before is None:  # a fresh run: start a new file
            os.remove(path)
            return
        epoch, step = self._keep_before
        with open(path, encoding="utf-8", newline="") as fh:
            text = fh.read()
        if text and not text.endswith("\n"):  # a row torn by a kill: drop it
            text = text[: text.rfind("\n") + 1]
        reader = csv.DictReader(io.StringIO(text))
        fields = list(reader.fieldnames or [])
        kept = [row for row in reader if _covered(row, epoch, step)]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=fields)  # CRLF, as Lightning appends the rows that follow
        writer.writeheader()
        writer.writerows(kept)
        atomic_write(path, lambda fh: fh.write(out.getvalue()), encoding="utf-8", newline="")
        self.metrics_keys = fields
        log.info("Resuming %s: kept %d rows of epochs < %d", path, len(kept), epoch)


def _covered(row: dict, epoch: int, step: int) -> bool:
    """A logged row belongs to the part of training a checkpoint covers (epochs before ``epoch``)."""
    try:
        if row.get("epoch") not in (None, ""):
            return int(float(row["epoch"])) < epoch
        return int(float(row["step"])) < step
    except (TypeError, ValueError):
        return False


class ResumableCSVLogger(CSVLogger):
    """CSVLogger that writes each row at once and continues ``metrics.csv`` when training resumes.

    Lightning's CSVLogger deletes an existing ``metrics.csv`` and buffers up to 100 rows, so a
    killed and resumed run loses its history. This one flushes every row and, given the resumed
    checkpoint's epoch and step, keeps the rows of the epochs the checkpoint covers.

    Args:
        save_dir: the run directory.
        name: sub-folder.
        version: sub-sub-folder ("" for none).
        resume_from: ``(first epoch to run, global step)`` of the checkpoint training resumes from;
            None for a fresh run.
    """

    def __init__(
        self, save_dir: str, name: str = "csv", version: str = "", resume_from: tuple[int, int] | None = None
    ) -> None:
        super().__init__(save_dir=save_dir, name=name, version=version, flush_logs_every_n_steps=1)
        self._resume_from = resume_from

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(self.log_dir, self._resume_from)
        return self._experiment
