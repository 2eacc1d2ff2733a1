"""What `lungnet.train.training.train` does once ``trainer.fit`` returns: picks the selected checkpoint, scores it
(`lungnet.evaluation.after_training`: val from the selected epoch's validation pass where it matches the checkpoint,
`lungnet.train.val_outputs`; after a multi-process training every rank scores its share of the rest,
`lungnet.evaluation.sharded`), and writes metrics.json, curves.png and, with ``checkpoint.select=last``, best.ckpt.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint

from lungnet.artifacts.checkpoint import CheckpointError, load_model
from lungnet.artifacts.decision import read_decision
from lungnet.artifacts.paths import card_path, decision_path
from lungnet.data.datamodule import LungDataModule
from lungnet.evaluation import sharded
from lungnet.evaluation.after_training import finish_training
from lungnet.io import atomic_write, write_json, write_text
from lungnet.train.curves import write_training_curves
from lungnet.train.loggers import log_final_metrics
from lungnet.train.module import LitClassifier
from lungnet.train.val_outputs import ValidationOutputs, reusable_val

log = logging.getLogger(__name__)


def selected_checkpoint(cfg: DictConfig, trainer: pl.Trainer, run_dir: Path) -> Path | None:
    """The checkpoint the finish scores (None: none was written, fast_dev_run or no model_checkpoint callback)."""
    checkpoint = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    if trainer.fast_dev_run or checkpoint is None:
        log.info("No checkpoint was written (fast_dev_run or no model_checkpoint callback): no metrics.json")
        return None
    if cfg.checkpoint.select == "last":  # no selection on val (cross-validation folds)
        return Path(checkpoint.dirpath) / "last.ckpt"
    return Path(checkpoint.best_model_path or run_dir / "checkpoints" / "last.ckpt")


def finish(cfg: DictConfig, trainer: pl.Trainer, module: LitClassifier, dm: LungDataModule, run_dir: Path) -> dict:
    """Evaluates the selected checkpoint on val and test (`lungnet.evaluation.after_training`); writes metrics.json,
    predictions, curves.png, and the checkpoint's decision file and model card. Val's outputs are those of the
    selected epoch's validation pass when they match the checkpoint's (`lungnet.train.val_outputs.reusable_val`).
    After a multi-process training each rank scores its share of the other splits (`lungnet.evaluation.sharded`),
    rank 0 goes on; the others return {}."""
    distributed = sharded.world_size() > 1
    best = selected_checkpoint(cfg, trainer, run_dir) if trainer.is_global_zero else None
    if distributed:
        best = sharded.agreed_path(best)  # rank 0's, once its file is complete
    if best is None:
        return {}
    if not best.is_file():
        raise CheckpointError(f"Training ended without the checkpoint {best}")
    loaded = load_model(best)
    device = trainer.strategy.root_device
    kept = next((c for c in trainer.callbacks if isinstance(c, ValidationOutputs)), None)
    val = reusable_val(kept, loaded, dm, device) if trainer.is_global_zero and "val" in dm.datasets else None
    scored = {"val": val} if val is not None else {}
    if distributed:  # the scoring steps below then reuse these outputs (their times show ~0 s)
        reused = sharded.agreed_flag(val is not None)
        scored.update(sharded.score_shards(cfg, loaded, dm, device, skip={"val"} if reused else set()))
    if not trainer.is_global_zero:
        return {}
    # val/test metrics, and the decision file evaluate.py split=val writes (lungnet.evaluation.after_training)
    progress_bar = bool(cfg.trainer.get("enable_progress_bar", True))
    results = finish_training(cfg, best, dm, run_dir, progress_bar=progress_bar, scored=scored, loaded=loaded)
    if best.name == "last.ckpt":
        mirror_as_best(best, results.get("decision_file"), module.labels)
    results.update(
        best_checkpoint=str(best),
        epochs_trained=int(trainer.current_epoch),
        monitor=cfg.checkpoint.monitor,
        selected=str(cfg.checkpoint.select),
        model=cfg.model.name,
        data=cfg.data.name,
    )
    if "test" not in results and "test" not in dm.datasets:
        log.info("No test split for %s: metrics.json holds validation numbers only", cfg.data.name)
    log_final_metrics(trainer, module.hparams, results)
    write_json(run_dir / "metrics.json", results)
    write_training_curves(run_dir)
    log.info("Run directory: %s", run_dir)
    return results


def mirror_as_best(final: Path, decision: str | None, labels: list[str]) -> None:
    """With ``checkpoint.select=last``, ``best.ckpt`` becomes a byte copy of the final ``last.ckpt`` and gets its
    decision file and model card, so ``predict.py ckpt=<run>/checkpoints/best.ckpt`` and the app run the selected
    model with its decisions.
    """
    best = final.with_name("best.ckpt")
    atomic_write(best, lambda fh: fh.write(final.read_bytes()), mode="wb")
    if decision is not None:
        record = read_decision(decision, final, labels)  # tied to the bytes by hash: the copy has the same
        record.checkpoint = best.name
        record.write(decision_path(best))
        card = card_path(decision)
        if card.is_file():
            write_text(card_path(decision_path(best)), card.read_text(encoding="utf-8"))
