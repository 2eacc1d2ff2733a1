"""``train(cfg)``: builds data, model and Trainer from the Hydra config and fits.

The run directory receives the resolved config, environment facts, split files, data report,
checkpoints (``checkpoints/best.ckpt``, ``last.ckpt``), TensorBoard logs, and ``metrics.json`` +
``predictions_<split>.csv`` computed with the best checkpoint.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from lungnet.callbacks import AtomicCheckpoint, FigureLogger, FreezeUnfreeze
from lungnet.checkpoint import load_model
from lungnet.data.datamodule import LungDataModule, make_source
from lungnet.evaluation.predict import predict_loader, predictions_table
from lungnet.io import write_csv, write_json, write_text
from lungnet.metrics import compute_metrics
from lungnet.module import LitClassifier
from lungnet.provenance import run_facts

log = logging.getLogger(__name__)


def plain(cfg: DictConfig | dict | None) -> dict:
    """Resolved plain-dict copy of a config node (safe to store in checkpoints)."""
    if cfg is None:
        return {}
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def resolve_root(data_cfg: dict) -> dict:
    """Makes ``root`` absolute against the directory the user launched from."""
    data_cfg = dict(data_cfg)
    if data_cfg.get("root"):
        data_cfg["root"] = str(Path(os.path.expanduser(str(data_cfg["root"]))).absolute())
    return data_cfg


def find_resume_checkpoint(run_dir: Path, resume) -> str | None:
    """``resume=true``: ``<run_dir>/checkpoints/last.ckpt``; a path: that checkpoint or run directory."""
    if not resume:
        return None
    target = run_dir if resume is True else Path(str(resume))
    if target.is_dir():
        target = target / "checkpoints" / "last.ckpt"
    if not target.is_file():
        if resume is True:
            log.warning("resume=true but %s does not exist: starting from scratch", target)
            return None
        raise FileNotFoundError(f"Cannot resume: no checkpoint at {target}")
    log.info("Resuming from %s", target)
    return str(target)


def build_trainer(cfg: DictConfig, run_dir: Path, has_val: bool) -> pl.Trainer:
    """Lightning Trainer from the ``trainer`` group plus lungnet's callbacks and loggers."""
    monitor = cfg.checkpoint.monitor if has_val else "train/loss_epoch"
    mode = cfg.checkpoint.mode if has_val else "min"
    ckpt = AtomicCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor=monitor,
        mode=mode,
        save_last=True,
        save_top_k=1,
        auto_insert_metric_name=False,
    )
    callbacks: list[pl.Callback] = [
        ckpt,
        LearningRateMonitor(logging_interval="epoch"),
        FigureLogger(every_n_epochs=int(cfg.log_figures_every)),
    ]
    if cfg.early_stopping.patience and has_val:
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=int(cfg.early_stopping.patience)))
    if cfg.finetune.unfreeze_at_epoch:
        callbacks.append(FreezeUnfreeze(int(cfg.finetune.unfreeze_at_epoch), float(cfg.finetune.backbone_lr_mult)))
    loggers = [
        TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False),
        CSVLogger(save_dir=str(run_dir), name="csv", version=""),
    ]
    kwargs = plain(cfg.trainer)
    return pl.Trainer(default_root_dir=str(run_dir), callbacks=callbacks, logger=loggers, **kwargs)


def evaluate_splits(ckpt_path: Path, dm: LungDataModule, run_dir: Path, splits: tuple[str, ...]) -> dict:
    """Metrics and prediction CSVs of the checkpoint on each available split."""
    loaded = load_model(ckpt_path)
    results = {}
    for split in splits:
        if split not in dm.datasets:
            continue
        probs, targets, paths = predict_loader(
            loaded.model, dm.loader(split), loaded.multilabel, desc=f"Evaluating {split}"
        )
        results[split] = compute_metrics(probs, targets, loaded.labels, loaded.multilabel)
        write_csv(
            run_dir / f"predictions_{split}.csv",
            predictions_table(paths, probs, targets, loaded.labels, loaded.multilabel),
        )
    return results


def train(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Trains one model as configured and returns the final metrics.

    Args:
        cfg: the composed ``train`` config.
        run_dir: the run directory (Hydra's output directory).

    Returns:
        ``{"val": {...}, "test": {...}, "best_checkpoint": path, ...}`` as written to metrics.json.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(int(cfg.seed), workers=True)
    data_cfg = resolve_root(plain(cfg.data))
    source = make_source(data_cfg)  # fails early and clearly on unknown dataset / missing root
    if data_cfg["source"] != "synthetic":
        source.check_root()
    module = LitClassifier(
        model=plain(cfg.model),
        labels=list(source.labels),
        multilabel=source.multilabel,
        optim=plain(cfg.optim),
        label_smoothing=float(cfg.label_smoothing),
        max_epochs=int(cfg.trainer.max_epochs),
        data=data_cfg,
        extra={"seed": int(cfg.seed), "augment": plain(cfg.augment)},
    )
    dm = LungDataModule(
        data_cfg, module.spec, seed=int(cfg.seed), augment=plain(cfg.augment).get("train"), run_dir=run_dir
    )
    dm.setup("fit")
    module.spec.input_size = dm.image_size  # the checkpoint records the size actually trained at
    module.hparams["spec"] = module.spec.to_dict()
    module.set_class_weights(dm.class_weights())
    if int(cfg.trainer.get("devices", 1) or 1) <= 1 or os.environ.get("LOCAL_RANK", "0") == "0":
        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        write_json(run_dir / "environment.json", run_facts(dm.table))
    trainer = build_trainer(cfg, run_dir, has_val="val" in dm.datasets)
    trainer.fit(module, datamodule=dm, ckpt_path=find_resume_checkpoint(run_dir, cfg.resume))
    if not trainer.is_global_zero:
        return {}
    best = Path(trainer.checkpoint_callback.best_model_path or run_dir / "checkpoints" / "last.ckpt")
    results = evaluate_splits(best, dm, run_dir, ("val", "test"))
    results.update(
        best_checkpoint=str(best),
        epochs_trained=int(trainer.current_epoch),
        monitor=cfg.checkpoint.monitor,
        model=cfg.model.name,
        data=cfg.data.name,
    )
    if "test" not in results:
        log.info("No test split for %s: metrics.json holds validation numbers only", cfg.data.name)
    write_json(run_dir / "metrics.json", results)
    log.info("Run directory: %s", run_dir)
    return results
