"""``train(cfg)``: builds data, model and Trainer from the Hydra config and fits.

The run directory receives the resolved config, environment facts, split files, data report,
checkpoints (``checkpoints/best.ckpt``, ``last.ckpt``), TensorBoard logs, and ``metrics.json`` +
``predictions_<split>.csv`` computed with the best checkpoint; beside it, the decision file (validation summary,
temperature, operating point, conformal scores, OOD gate) and model card that ``evaluate.py ckpt=<best.ckpt>
split=val`` writes (`lungnet.evaluation.after_training`), so ``predict.py`` and the app need nothing else.

Everything a user can get wrong is checked before the first file of the run is written, and a
killed run continues exactly with ``resume=true`` (same run directory) or ``resume=<run dir>``.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import pytorch_lightning as pl
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from lungnet.artifacts.checkpoint import CheckpointError, read_checkpoint
from lungnet.config_checks import pin_paths
from lungnet.data.datamodule import LungDataModule, resolve_image_size
from lungnet.data.multi import make_source, resolve_root
from lungnet.data.overlap import RecordImageHashes, image_hashes
from lungnet.data.sources import Source
from lungnet.data.splits import ExpectedSplits, split_fingerprint
from lungnet.errors import ConfigError
from lungnet.hardware import PrecisionChoice, choose_training_precision
from lungnet.io import remove_stale_temporaries, write_json, write_text
from lungnet.provenance import run_facts
from lungnet.train.callbacks import WeightEMA, WeightSWA
from lungnet.train.checks import check_progressive_resize, first_line, plain, validate_config
from lungnet.train.finish import finish
from lungnet.train.history import HISTORY, EpochHistory
from lungnet.train.loggers import build_loggers
from lungnet.train.module import LitClassifier
from lungnet.train.val_outputs import ValidationOutputs

log = logging.getLogger(__name__)
NO_VAL_MONITOR = "train/loss_epoch"  # what the checkpoint and a plateau scheduler follow when the data has no val split


def silence_known_noise() -> None:
    """Drops two messages every run printed that say nothing about the run, each matched exactly: Lightning's tip
    to install litlogger (an INFO record at every Trainer) and torch's FutureWarning about ``LeafSpec`` raised
    inside Lightning's own ``_pytree`` helper. (torchmetrics' AUROC warnings: `lungnet.scoring.metrics`.)
    """
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
    )
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if not any(isinstance(f, _TipFilter) for f in rank_zero.filters):
        rank_zero.addFilter(_TipFilter())


class _TipFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.msg)


# a callback whose own setting says "off" (0) is not added (conf/callbacks/<name>.yaml says which)
OFF_WHEN_ZERO = {
    "EarlyStopping": "patience",
    "FreezeUnfreeze": "unfreeze_at_epoch",
    "WeightEMA": "decay",
    "WeightSWA": "epochs",
    "ProgressiveResize": "epochs",
}


def resume_target(run_dir: Path, resume) -> tuple[Path | None, Path]:
    """Where to resume from and which run directory to write into.

    ``resume=true``: ``<run_dir>/checkpoints/last.ckpt`` (a fresh start when there is none yet);
    ``resume=<run dir>``: that run's ``last.ckpt``, and the run continues in that directory;
    ``resume=<checkpoint file>``: that checkpoint, written into the current run directory.

    Returns:
        (checkpoint or None, run directory).

    Raises:
        FileNotFoundError: an explicit path without a checkpoint.
    """
    if resume is None or resume is False or str(resume).lower() in ("false", "null", ""):
        return None, run_dir
    explicit = not (resume is True or str(resume).lower() == "true")
    target = Path(str(resume)).expanduser() if explicit else run_dir
    if target.is_dir():
        run_dir = target if explicit else run_dir
        target = target / "checkpoints" / "last.ckpt"
    if not target.is_file():
        if not explicit:
            log.warning("resume=true but %s does not exist: starting from scratch", target)
            return None, run_dir
        raise FileNotFoundError(f"Cannot resume: no checkpoint at {target}")
    log.info("Resuming from %s (run directory %s)", target, run_dir)
    return target.resolve(), run_dir


def check_resume_compatible(ckpt: dict, path: Path, module: LitClassifier, data_cfg: dict, ema: bool) -> None:
    """Refuses to continue a checkpoint trained for another model, label set, data set or split seed, or with a weight
    average (EMA or SWA) when ``ema`` (this config has one) is off: it would continue from the averaged weights.

    Raises:
        CheckpointError: what differs.
    """
    hp = ckpt["hyper_parameters"]
    theirs = {
        "model": hp["model"].get("name"),
        "labels": list(hp["labels"]),
        "dataset": (hp.get("data") or {}).get("source"),
        "in_chans": hp["model"].get("in_chans"),
        "data.split_seed": hp["data"].get("split_seed"),  # a checkpoint older than it: its seed (checkpoint_checks)
    }
    ours = {
        "model": module.hparams.model.get("name"),
        "labels": list(module.labels),
        "dataset": data_cfg.get("source"),
        "in_chans": module.hparams.model.get("in_chans"),
        "data.split_seed": data_cfg.get("split_seed"),
    }
    diff = [f"{k}: checkpoint {theirs[k]!r}, config {ours[k]!r}" for k in ours if theirs[k] != ours[k]]
    if diff:
        raise CheckpointError(
            f"Cannot resume from {path}: it was trained for another setup ({'; '.join(diff)}). "
            "Resume with the config it was trained with, or start a new run (resume=false)."
        )
    if "current_model_state" in ckpt and not ema:
        raise CheckpointError(
            f"Cannot resume from {path}: it was trained with a weight average (ema.decay or swa.epochs) and this "
            "config has none; resuming would continue from the averaged weights. Resume with the same setting."
        )
    check_resume_length(hp, path, module.hparams)
    own = module.state_dict()
    wrong = [k for k, v in ckpt["state_dict"].items() if k in own and own[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"Cannot resume from {path}: tensor shapes differ from this model (e.g. {wrong[:3]})")


def build_callbacks(cfg: DictConfig, has_val: bool) -> list[pl.Callback]:
    """The callbacks configured under ``callbacks`` (conf/callbacks/), less those whose setting says off.

    Without a validation split the checkpoint monitors the training loss and early stopping is off. With
    ``checkpoint.select=last`` it monitors nothing and keeps ``last.ckpt`` alone; `finish` copies the final one to
    ``best.ckpt`` (`mirror_as_best`).

    Raises:
        ConfigError: a callback that cannot be built (unknown class, bad argument).
    """
    out = []
    for name, spec in (plain(cfg.get("callbacks")) or {}).items():
        if not isinstance(spec, dict) or "_target_" not in spec:
            continue
        cls = str(spec["_target_"]).rsplit(".", 1)[-1]
        if cls in OFF_WHEN_ZERO and not spec.get(OFF_WHEN_ZERO[cls]):
            continue
        if not has_val and cls == "EarlyStopping":
            continue
        if not has_val and "monitor" in spec and cls.endswith("Checkpoint"):
            spec.update(monitor=NO_VAL_MONITOR, mode="min")
        if cfg.checkpoint.select == "last" and "monitor" in spec and cls.endswith("Checkpoint"):
            spec.update(monitor=None, save_top_k=0)  # last.ckpt only; `finish` copies the final one to best.ckpt
        try:
            out.append(instantiate(spec))
        except InstantiationException as exc:
            raise ConfigError(f"callbacks.{name}: cannot build {spec['_target_']}: {first_line(exc)}") from exc
        log.debug("Callback %s: %s", name, spec["_target_"])
    return out


def check_resume_length(hp: dict, path: Path, ours) -> None:
    """``trainer.max_epochs`` may change on resume unless the learning-rate schedule is laid out over it (cosine
    with ``scheduler.T_max: null``): the restored schedule would run past its end and its learning rate climb again.

    Raises:
        CheckpointError: the length changed under such a schedule.
    """
    then, now = hp.get("max_epochs"), ours.get("max_epochs")
    scheduler = ours.get("scheduler") or {}
    cosine = str(scheduler.get("_target_", "")).endswith("CosineAnnealingLR") and scheduler.get("T_max") is None
    if then is not None and now is not None and int(then) != int(now) and cosine:
        raise CheckpointError(
            f"Cannot resume from {path} with trainer.max_epochs={now}: its cosine learning-rate schedule was laid out "
            f"over {then} epochs and would restart past them. Resume with trainer.max_epochs={then}, or start a new "
            "run (scheduler=none or plateau, or a fixed scheduler.T_max, can be resumed for longer)"
        )


def build_trainer(cfg: DictConfig, run_dir: Path, has_val: bool, resume_from: tuple[int, int] | None = None):
    """Lightning Trainer from the ``trainer`` group with the configured callbacks and loggers.

    Args:
        cfg: the train config.
        run_dir: the run directory.
        has_val: the data has a validation split (else the checkpoint monitors the training loss).
        resume_from: (first epoch, global step) of the checkpoint being resumed, for the CSV log.

    Raises:
        ConfigError: a ``trainer.*`` argument Lightning does not accept, or a callback/logger that cannot be built.
    """
    callbacks = build_callbacks(cfg, has_val)
    if has_val is False and any(isinstance(c, (WeightEMA, WeightSWA)) for c in callbacks):
        log.warning(
            "ema.decay or swa.epochs without a validation split: best.ckpt holds the average but is chosen on the "
            "training loss of the live weights; use checkpoint.select=last or add a validation split"
        )
    loggers = build_loggers(plain(cfg.get("logger")), resume_from)
    if not loggers:  # logger=none: the learning rates are in history.csv (Lightning's monitor needs a logger)
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    kwargs = plain(cfg.trainer)
    if not any(isinstance(c, ModelCheckpoint) for c in callbacks):
        kwargs.setdefault("enable_checkpointing", False)  # callbacks.model_checkpoint=null: no checkpoint at all
    try:
        return pl.Trainer(default_root_dir=str(run_dir), callbacks=callbacks, logger=loggers or False, **kwargs)
    except (TypeError, ValueError, MisconfigurationException) as exc:
        raise ConfigError(f"Invalid trainer settings {kwargs}: {first_line(exc)}") from exc


def build_module(cfg: DictConfig, source: Source, data_cfg: dict) -> LitClassifier:
    """The LightningModule for ``cfg`` (loads pretrained weights, so a missing file stops the run here)."""
    return LitClassifier(
        model=plain(cfg.model),
        labels=list(source.labels),
        multilabel=source.multilabel,
        optimizer=plain(cfg.optimizer),
        scheduler=plain(cfg.get("scheduler")) or None,
        backbone_lr_mult=float(cfg.backbone_lr_mult),
        warmup_epochs=int(cfg.warmup_epochs),
        label_smoothing=float(cfg.label_smoothing),
        max_epochs=int(cfg.trainer.max_epochs),
        mixup=plain(cfg.mixup),
        data=data_cfg,
        extra={"seed": int(cfg.seed), "augment": plain(cfg.augment)},
    )


def resolve_precision(cfg: DictConfig, data_cfg: dict, module: LitClassifier) -> PrecisionChoice:
    """Resolves ``trainer.precision=auto`` for this machine and input size into ``cfg.trainer`` (so config.yaml and
    the Trainer get the choice), and logs the choice with its reason; an explicit precision is kept."""
    choice = choose_training_precision(
        cfg.trainer.get("precision", "32-true"),
        cfg.trainer.get("accelerator", "auto"),
        int(data_cfg["image_size"]),
        int(cfg.precision_auto.bf16_min_image_size),
    )
    with open_dict(cfg):
        cfg.trainer.precision = choice.precision
    log.info("Training precision %s: %s", choice.precision, choice.reason)
    return choice


def record_data_facts(module: LitClassifier, dm: LungDataModule) -> None:
    """Puts what the data decided (input size, class weights, split sizes and fingerprint) into the module's
    hyper-parameters, so the checkpoint and every logger's hparams say what was trained."""
    module.spec.input_size = dm.image_size  # the size actually trained at
    counts = {s: {str(k): int(v) for k, v in c.items()} for s, c in dm.report.get("class_counts", {}).items()}
    module.set_class_weights(dm.class_weights())
    module.record(
        spec=module.spec.to_dict(),
        data_report={"sizes": {s: int(n) for s, n in dm.report["sizes"].items()}, "class_counts": counts},
        extra={**module.hparams["extra"], "splits": split_fingerprint(dm.table)},  # evaluate.py and resume verify them
    )


def train(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Trains one model as configured and returns the final metrics.

    Every check that can fail runs before the first file of the run is written.

    Args:
        cfg: the composed ``train`` config.
        run_dir: the run directory (Hydra's output directory; ``resume=<run dir>`` continues that one).

    Returns:
        ``{"val": {...}, "test": {...}, "best_checkpoint": path, ...}`` as written to metrics.json; ``{}`` when no
        checkpoint was written (``debug=fdr``, ``callbacks=none``) and on ranks other than 0.

    Raises:
        TrainingDiverged: a loss or the weights stopped being finite (`lungnet.train.divergence`): no checkpoint,
        metrics.json
            or decision file of the diverged weights exists.
    """
    silence_known_noise()
    ckpt_path, run_dir = resume_target(Path(run_dir), cfg.get("resume"))
    pin_paths(cfg, run_dir)
    pl.seed_everything(int(cfg.seed), workers=True)
    data_cfg = resolve_root(plain(cfg.data))
    source = make_source(data_cfg)  # fails early and clearly on unknown dataset / missing root
    if data_cfg["source"] != "synthetic":
        source.check_root()
    validate_config(cfg, source)
    module = build_module(cfg, source, data_cfg)
    data_cfg["image_size"] = resolve_image_size(data_cfg, module.spec)  # resolved once; everything below reads it
    precision = resolve_precision(cfg, data_cfg, module)
    check_progressive_resize(cfg, data_cfg["image_size"])
    resume_from, expected = None, None
    if ckpt_path is not None:
        ckpt = read_checkpoint(ckpt_path)  # weights_only=True
        resume_from = (int(ckpt["epoch"]) + 1, int(ckpt["global_step"]))
        expected = ExpectedSplits.of(ckpt["hyper_parameters"], ckpt_path, "resume")
    trainer = build_trainer(cfg, run_dir, has_val=True, resume_from=resume_from)
    if ckpt_path is not None:
        ema = any(isinstance(c, (WeightEMA, WeightSWA)) for c in trainer.callbacks)
        check_resume_compatible(ckpt, ckpt_path, module, data_cfg, ema=ema)
    run_dir.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_temporaries(run_dir)
    if stale:
        log.info("Removed %d temporary file(s) left by an interrupted run: %s", len(stale), [p.name for p in stale])
    dm = LungDataModule(
        data_cfg,
        module.spec,
        seed=int(cfg.seed),
        augment=plain(cfg.augment).get("train"),
        run_dir=run_dir,
        expected_splits=expected,  # a resume refused for changed splits leaves the run directory as it was
        owns_data=True,  # this run's own data config: a synthetic set is generated under data.root when absent
        cache_dir=cfg.paths.get("cache_dir"),
    )
    dm.setup("fit")
    if "val" not in dm.datasets:  # data.val_fraction=0 and no val shipped: monitors fall back to the training loss
        trainer = build_trainer(cfg, run_dir, has_val=False, resume_from=resume_from)
        module.plateau_monitor = NO_VAL_MONITOR
        log.info("No val split (data.val_fraction=0 and none shipped): no validation; monitors use %s", NO_VAL_MONITOR)
    record_data_facts(module, dm)
    trainer.callbacks.append(RecordImageHashes(image_hashes(dm.table)))  # evaluations refuse copies of these
    trainer.callbacks.append(EpochHistory(run_dir / HISTORY))  # curves.png's record, whatever the loggers
    if "val" in dm.datasets:  # the finish reuses the selected epoch's validation outputs
        monitor = cfg.checkpoint.monitor if cfg.checkpoint.select != "last" else None
        trainer.callbacks.append(ValidationOutputs(monitor, str(cfg.checkpoint.mode)))
    if cfg.get("channels_last"):
        module.use_channels_last()
    if int(cfg.trainer.get("devices", 1) or 1) <= 1 or os.environ.get("LOCAL_RANK", "0") == "0":
        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        write_json(run_dir / "environment.json", {**run_facts(dm.table), "precision": precision.record()})
        if module.weights_report is not None:  # model.weights=<a lungnet checkpoint>: which outputs it started
            write_json(run_dir / "weights_report.json", module.weights_report)
    # weights_only=True: Lightning would otherwise unpickle arbitrary objects from the resumed file
    trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt_path) if ckpt_path else None, weights_only=True)
    return finish(cfg, trainer, module, dm, run_dir)
