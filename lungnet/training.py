"""``train(cfg)``: builds data, model and Trainer from the Hydra config and fits.

The run directory receives the resolved config, environment facts, split files, data report,
checkpoints (``checkpoints/best.ckpt``, ``last.ckpt``), TensorBoard logs, and ``metrics.json`` +
``predictions_<split>.csv`` computed with the best checkpoint.

Everything a user can get wrong is checked before the first file of the run is written, and a
killed run continues exactly with ``resume=true`` (same run directory) or ``resume=<run dir>``.
"""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor
from pytorch_lightning.loggers import TensorBoardLogger

from lungnet.callbacks import (
    AtomicCheckpoint,
    EpochSeeder,
    FigureLogger,
    FreezeUnfreeze,
    ResumableCSVLogger,
    WeightEMA,
)
from lungnet.checkpoint import CheckpointError, load_model, read_checkpoint
from lungnet.cli import ConfigError
from lungnet.data.datamodule import LungDataModule, make_source
from lungnet.data.overlap import RecordImageHashes, image_hashes
from lungnet.data.sources import Source
from lungnet.data.splits import ExpectedSplits, split_fingerprint
from lungnet.evaluation.curves import write_training_curves
from lungnet.evaluation.predict import predict_loader, predictions_table
from lungnet.io import remove_stale_temporaries, write_csv, write_json, write_text
from lungnet.metrics import compute_metrics, metric_collection
from lungnet.module import LitClassifier
from lungnet.provenance import run_facts

log = logging.getLogger(__name__)

CHOICES = {
    "optim.name": ("adamw", "adam", "sgd"),
    "optim.scheduler": ("cosine", "plateau", "none"),
    "checkpoint.mode": ("min", "max"),
    "data.balance": ("none", "loss", "sampler"),
    "data.resize": ("squash", "pad"),
    "data.on_bad_file": ("skip", "error"),
}


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


def validate_config(cfg: DictConfig, source: Source) -> None:
    """Checks option values before anything is built or written.

    Raises:
        ConfigError: the first invalid value, with the valid ones.
    """
    for key, valid in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value is not None and str(value).lower() not in valid:
            raise ConfigError(f"{key}={value!r} is not valid; choose one of: {', '.join(valid)}")
    numbers = {
        "trainer.max_epochs": (OmegaConf.select(cfg, "trainer.max_epochs"), 1),
        "data.batch_size": (OmegaConf.select(cfg, "data.batch_size"), 1),
        "data.num_workers": (OmegaConf.select(cfg, "data.num_workers"), 0),
        "optim.lr": (OmegaConf.select(cfg, "optim.lr"), 0),
        "data.downsample_to": (OmegaConf.select(cfg, "data.downsample_to"), 8),
    }
    for key, (value, low) in numbers.items():
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool) or value < low):
            raise ConfigError(f"{key}={value!r} must be a number >= {low}")
    for key in ("data.val_fraction", "data.test_fraction", "ema.decay"):
        value = OmegaConf.select(cfg, key)
        if value is not None and not 0 <= float(value) < 1:
            raise ConfigError(f"{key}={value} must be in [0, 1)" + (" (0: off)" if key == "ema.decay" else ""))
    accepted = set(inspect.signature(pl.Trainer).parameters) - {"callbacks", "logger", "default_root_dir"}
    unknown = sorted(set(plain(cfg.trainer)) - accepted)
    if unknown:
        raise ConfigError(f"Unknown trainer argument(s) {unknown}; pl.Trainer accepts: {', '.join(sorted(accepted))}")
    names = metric_collection(len(source.labels), source.multilabel).keys()
    monitors = sorted({"val/loss", "train/loss_epoch", *(f"val/{n}" for n in names)})
    if cfg.checkpoint.monitor not in monitors:
        raise ConfigError(f"checkpoint.monitor={cfg.checkpoint.monitor!r} is not logged; choose one of: {monitors}")
    if cfg.checkpoint.get("select", "best") not in ("best", "last"):
        raise ConfigError(f"checkpoint.select={cfg.checkpoint.select!r}: choose best or last")
    if cfg.checkpoint.get("select") == "last" and int(cfg.early_stopping.patience or 0) > 0:
        raise ConfigError(
            "checkpoint.select=last with early_stopping.patience>0 would still pick the epoch on val: "
            "set early_stopping.patience=0"
        )


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


def find_resume_checkpoint(run_dir: Path, resume) -> str | None:
    """The checkpoint ``resume`` points to (see `resume_target`), or None."""
    ckpt, _ = resume_target(Path(run_dir), resume)
    return str(ckpt) if ckpt else None


def check_resume_compatible(ckpt: dict, path: Path, module: LitClassifier, data_cfg: dict, ema: bool) -> None:
    """Refuses to continue a checkpoint trained for another model, label set or data set, or with a weight EMA
    when ``ema`` (this config's) is off: it would continue from the averaged weights.

    Raises:
        CheckpointError: what differs.
    """
    hp = ckpt["hyper_parameters"]
    theirs = {
        "model": hp["model"].get("name"),
        "labels": list(hp["labels"]),
        "dataset": (hp.get("data") or {}).get("source"),
        "in_chans": hp["model"].get("in_chans"),
    }
    ours = {
        "model": module.hparams.model.get("name"),
        "labels": list(module.labels),
        "dataset": data_cfg.get("source"),
        "in_chans": module.hparams.model.get("in_chans"),
    }
    diff = [f"{k}: checkpoint {theirs[k]!r}, config {ours[k]!r}" for k in ours if theirs[k] != ours[k]]
    if diff:
        raise CheckpointError(
            f"Cannot resume from {path}: it was trained for another setup ({'; '.join(diff)}). "
            "Resume with the config it was trained with, or start a new run (resume=false)."
        )
    if "current_model_state" in ckpt and not ema:
        raise CheckpointError(
            f"Cannot resume from {path}: it was trained with a weight EMA (ema.decay) and this config has "
            "none; resuming would continue from the averaged weights. Resume with the same ema.decay."
        )
    own = module.state_dict()
    wrong = [k for k, v in ckpt["state_dict"].items() if k in own and own[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"Cannot resume from {path}: tensor shapes differ from this model (e.g. {wrong[:3]})")


def extra_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """Any other Lightning callbacks from the config: ``+callbacks.<name>._target_=<class>`` (+ its arguments).

    Raises:
        hydra.errors.InstantiationException: a target that cannot be imported or built.
    """
    out = []
    for name, spec in sorted((plain(cfg.get("callbacks")) or {}).items()):
        log.info("Adding callback %s: %s", name, spec.get("_target_"))
        out.append(instantiate(spec))
    return out


def build_trainer(
    cfg: DictConfig,
    run_dir: Path,
    has_val: bool,
    resume_from: tuple[int, int] | None = None,
    extra: list[pl.Callback] | None = None,
) -> pl.Trainer:
    """Lightning Trainer from the ``trainer`` group plus lungnet's callbacks and loggers.

    Args:
        cfg: the train config.
        run_dir: the run directory.
        has_val: the data has a validation split (else the checkpoint monitors the training loss).
        resume_from: (first epoch, global step) of the checkpoint being resumed, for the CSV log.
        extra: more callbacks (`extra_callbacks`).

    Raises:
        ConfigError: a ``trainer.*`` argument Lightning does not accept.
    """
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
        enable_version_counter=False,  # one best.ckpt and one last.ckpt per run directory
    )
    callbacks: list[pl.Callback] = [
        ckpt,
        EpochSeeder(int(cfg.seed)),
        LearningRateMonitor(logging_interval="epoch"),
        FigureLogger(every_n_epochs=int(cfg.log_figures_every)),
    ]
    if cfg.early_stopping.patience and has_val:
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=int(cfg.early_stopping.patience)))
    if cfg.finetune.unfreeze_at_epoch:
        callbacks.append(FreezeUnfreeze(int(cfg.finetune.unfreeze_at_epoch), float(cfg.finetune.backbone_lr_mult)))
    ema = cfg.get("ema") or {}
    if float(ema.get("decay", 0.0) or 0.0):
        if not has_val:
            log.warning(
                "ema.decay without a validation split: best.ckpt holds the average but is chosen on the "
                "training loss of the live weights; use checkpoint.select=last or add a validation split"
            )
        callbacks.append(WeightEMA(float(ema["decay"]), int(ema.get("start_epoch", 0))))
    callbacks += list(extra or [])
    loggers = [
        TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False),
        ResumableCSVLogger(save_dir=str(run_dir), name="csv", version="", resume_from=resume_from),
    ]
    kwargs = plain(cfg.trainer)
    try:
        return pl.Trainer(default_root_dir=str(run_dir), callbacks=callbacks, logger=loggers, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Invalid trainer settings {kwargs}: {exc}") from exc


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
        run_dir: the run directory (Hydra's output directory; ``resume=<run dir>`` continues that one).

    Returns:
        ``{"val": {...}, "test": {...}, "best_checkpoint": path, ...}`` as written to metrics.json.
    """
    ckpt_path, run_dir = resume_target(Path(run_dir), cfg.get("resume"))
    pl.seed_everything(int(cfg.seed), workers=True)
    data_cfg = resolve_root(plain(cfg.data))
    source = make_source(data_cfg)  # fails early and clearly on unknown dataset / missing root
    if data_cfg["source"] != "synthetic":
        source.check_root()
    validate_config(cfg, source)
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
    extra = extra_callbacks(cfg)
    resume_from, expected = None, None
    if ckpt_path is not None:
        ckpt = read_checkpoint(ckpt_path)  # weights_only=True
        check_resume_compatible(ckpt, ckpt_path, module, data_cfg, ema=bool(OmegaConf.select(cfg, "ema.decay")))
        resume_from = (int(ckpt["epoch"]) + 1, int(ckpt["global_step"]))
        expected = ExpectedSplits.of(ckpt["hyper_parameters"], ckpt_path, "resume")
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
    )
    dm.setup("fit")
    module.spec.input_size = dm.image_size  # the checkpoint records the size actually trained at
    module.hparams["spec"] = module.spec.to_dict()
    module.hparams["extra"]["splits"] = split_fingerprint(dm.table)  # evaluate.py and resume verify the splits
    extra.append(RecordImageHashes(image_hashes(dm.table)))  # evaluations refuse copies of these images
    module.set_class_weights(dm.class_weights())
    if cfg.get("channels_last"):
        module.use_channels_last()
    if int(cfg.trainer.get("devices", 1) or 1) <= 1 or os.environ.get("LOCAL_RANK", "0") == "0":
        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        write_json(run_dir / "environment.json", run_facts(dm.table))
    trainer = build_trainer(cfg, run_dir, has_val="val" in dm.datasets, resume_from=resume_from, extra=extra)
    # weights_only=True: Lightning would otherwise unpickle arbitrary objects from the resumed file
    trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt_path) if ckpt_path else None, weights_only=True)
    if not trainer.is_global_zero:
        return {}
    best = Path(trainer.checkpoint_callback.best_model_path or run_dir / "checkpoints" / "last.ckpt")
    if cfg.checkpoint.get("select", "best") == "last":  # no selection on val (cross-validation folds)
        best = run_dir / "checkpoints" / "last.ckpt"
    if not best.is_file():
        raise CheckpointError(f"Training ended without a checkpoint in {run_dir / 'checkpoints'}")
    results = evaluate_splits(best, dm, run_dir, ("val", "test"))
    results.update(
        best_checkpoint=str(best),
        epochs_trained=int(trainer.current_epoch),
        monitor=cfg.checkpoint.monitor,
        selected=str(cfg.checkpoint.get("select", "best")),
        model=cfg.model.name,
        data=cfg.data.name,
    )
    if "test" not in results:
        log.info("No test split for %s: metrics.json holds validation numbers only", cfg.data.name)
    write_json(run_dir / "metrics.json", results)
    write_training_curves(run_dir)
    log.info("Run directory: %s", run_dir)
    return results
