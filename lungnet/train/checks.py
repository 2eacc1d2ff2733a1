"""What `lungnet.train.training.train` checks before it builds or writes anything: values the schema's types cannot
express (metric names, combinations), Trainer arguments and the accelerator, and the optimizer and scheduler
classes (built and stepped once on a dummy parameter).
"""

from __future__ import annotations

import inspect

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.accelerators import CUDAAccelerator, MPSAccelerator, XLAAccelerator

from lungnet.config_checks import check_ranges, renamed_keys
from lungnet.data.sources import Source
from lungnet.errors import ConfigError
from lungnet.schema import TrainConfig
from lungnet.scoring.metrics import metric_collection
from lungnet.train.module import build_scheduler

ACCELERATORS = {"cpu": "cpu", "gpu": "cuda", "cuda": "cuda", "mps": "mps", "tpu": "xla", "xla": "xla", "auto": "auto"}


def plain(cfg: DictConfig | dict | None) -> dict:
    """Resolved plain-dict copy of a config node (enums as strings: safe to store in checkpoints)."""
    if cfg is None:
        return {}
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True) if isinstance(cfg, DictConfig) else dict(cfg)


def validate_config(cfg: DictConfig, source: Source) -> None:
    """Checks what the schema cannot (ranges, metric names, combinations) before anything is built or written.

    Raises:
        ConfigError: the first invalid value, with the valid ones.
    """
    old = renamed_keys(cfg)
    if old:
        raise ConfigError(old[0])
    check_ranges(cfg, TrainConfig)
    check_trainer(plain(cfg.trainer))
    check_optimizer(cfg)
    names = metric_collection(len(source.labels), source.multilabel).keys()
    monitors = sorted({"val/loss", "train/loss_epoch", *(f"val/{n}" for n in names)})
    if cfg.checkpoint.monitor not in monitors:
        raise ConfigError(f"checkpoint.monitor={cfg.checkpoint.monitor!r} is not logged; choose one of: {monitors}")
    if "loss" in str(cfg.checkpoint.monitor) and str(cfg.checkpoint.mode) == "max":
        raise ConfigError(f"checkpoint.monitor={cfg.checkpoint.monitor} is a loss: set checkpoint.mode=min too")
    if source.multilabel and str(cfg.data.balance) == "sampler":
        raise ConfigError("data.balance=sampler draws by class, which multi-label data has not: use data.balance=loss")
    stopping = OmegaConf.select(cfg, "callbacks.early_stopping.patience", default=0)
    if cfg.checkpoint.select == "last" and stopping:
        raise ConfigError(
            "checkpoint.select=last with early_stopping.patience>0 would still pick the epoch on val: "
            "set early_stopping.patience=0"
        )
    check_weight_averaging(cfg)


def check_progressive_resize(cfg: DictConfig, full_size: int) -> None:
    """Progressive resizing that starts below the full input size and leaves the last epochs, and every averaged
    one (``swa.epochs``), at the full size.

    Args:
        cfg: the train config.
        full_size: the input size the run trains at (``data.image_size``, or the model's default).

    Raises:
        ConfigError: no full-size epoch after the resized ones, one averaged by SWA while resized, or a
            ``start_size`` not below ``full_size``.
    """
    epochs = OmegaConf.select(cfg, "progressive_resize.epochs", default=0)
    if not epochs:
        return
    max_epochs = OmegaConf.select(cfg, "trainer.max_epochs", default=None)
    full_epochs = max(OmegaConf.select(cfg, "swa.epochs", default=0), 1)
    if max_epochs is None or max_epochs - epochs < full_epochs:
        raise ConfigError(
            f"progressive_resize.epochs={epochs} leaves fewer than {full_epochs} of trainer.max_epochs={max_epochs} "
            "at the full size (the last epoch, and every epoch swa.epochs averages, must be): resize fewer epochs"
        )
    start = cfg.progressive_resize.start_size
    if start >= full_size:
        raise ConfigError(
            f"progressive_resize.start_size={start} is not below the input size {full_size} px: start smaller, or "
            "set progressive_resize.epochs=0"
        )


def check_weight_averaging(cfg: DictConfig) -> None:
    """One weight average at a time, and SWA's epochs inside the schedule.

    Raises:
        ConfigError: EMA and SWA both on, or ``swa.epochs`` above ``trainer.max_epochs``.
    """
    epochs, ema = OmegaConf.select(cfg, "swa.epochs", default=0), OmegaConf.select(cfg, "ema.decay", default=0)
    if epochs and ema:
        raise ConfigError(f"ema.decay={ema} and swa.epochs={epochs} both average the weights: set one of them to 0")
    max_epochs = OmegaConf.select(cfg, "trainer.max_epochs", default=None)
    if epochs and (max_epochs is None or max_epochs < epochs):
        raise ConfigError(f"swa.epochs={epochs} averages more epochs than trainer.max_epochs={max_epochs} has")


def check_trainer(kwargs: dict) -> None:
    """Trainer arguments Lightning accepts, and an accelerator this machine has.

    Raises:
        ConfigError: an unknown argument, or an accelerator that is unknown or not available here.
    """
    accepted = set(inspect.signature(pl.Trainer).parameters) - {"callbacks", "logger", "default_root_dir"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(f"Unknown trainer argument(s) {unknown}; pl.Trainer accepts: {', '.join(sorted(accepted))}")
    epochs = kwargs.get("max_epochs")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ConfigError(f"trainer.max_epochs={epochs!r} must be an integer >= 1")
    accelerator = kwargs.get("accelerator", "auto")
    if not isinstance(accelerator, str):
        return  # an Accelerator instance: Lightning checks it
    available = ["cpu"] + [n for n, a in (("cuda", CUDAAccelerator), ("mps", MPSAccelerator)) if a.is_available()]
    if XLAAccelerator.is_available():
        available.append("tpu")
    kind = ACCELERATORS.get(accelerator.lower())
    if kind is None:
        raise ConfigError(
            f"trainer.accelerator={accelerator!r} is not valid; choose one of: {', '.join(ACCELERATORS)} "
            f"(available here: {', '.join(available)})"
        )
    if kind not in ("auto", "cpu") and {"xla": "tpu"}.get(kind, kind) not in available:
        raise ConfigError(
            f"trainer.accelerator={accelerator}: no {kind.upper()} device is available on this machine; available "
            f"here: {', '.join(available)} (use trainer=cpu, or trainer.accelerator=auto)"
        )


def check_optimizer(cfg: DictConfig) -> None:
    """Builds the configured optimizer and scheduler on a dummy parameter, so a wrong class or argument stops the
    run before anything is written.

    Raises:
        ConfigError: what torch or Hydra said, naming the key.
    """
    opt_cfg = plain(cfg.optimizer)
    lr = opt_cfg.get("lr")
    if not opt_cfg.get("_target_") or isinstance(lr, bool) or not isinstance(lr, int | float) or lr < 0:
        raise ConfigError(f"optimizer needs _target_ (a torch.optim class) and lr >= 0; got {opt_cfg}")
    params = [torch.nn.Parameter(torch.zeros(1))]
    try:
        optimizer = instantiate(opt_cfg, _partial_=True)(params)
    except (InstantiationException, TypeError, ValueError) as exc:
        raise ConfigError(f"optimizer: cannot build {opt_cfg['_target_']}: {first_line(exc)}") from exc
    sched_cfg = plain(cfg.get("scheduler"))
    try:
        scheduler = build_scheduler(sched_cfg, optimizer, 1)
        optimizer.step()  # one step of each: arguments torch only uses when stepping (eta_min) fail here too
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(0.0)
        elif scheduler is not None:
            scheduler.step()
    except (InstantiationException, TypeError, ValueError) as exc:
        raise ConfigError(f"scheduler: cannot build {sched_cfg.get('_target_')}: {first_line(exc)}") from exc
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and int(cfg.warmup_epochs):
        raise ConfigError("warmup_epochs>0 does not combine with scheduler=plateau: set warmup_epochs=0")
    unfreeze, warmup = int(OmegaConf.select(cfg, "finetune.unfreeze_at_epoch", default=0)), int(cfg.warmup_epochs)
    if scheduler is not None and 0 < unfreeze < warmup:
        raise ConfigError(
            f"finetune.unfreeze_at_epoch={unfreeze} falls inside the warm-up (warmup_epochs={warmup}): the scheduler "
            "after the warm-up cannot take the backbone's parameter group; unfreeze at or after the warm-up's end"
        )


def first_line(exc: BaseException) -> str:
    """The first non-empty line of what an exception (or its cause) says."""
    cause = exc.__cause__ or exc
    lines = [line for line in str(cause).splitlines() if line.strip()]
    return lines[0] if lines else type(cause).__name__
