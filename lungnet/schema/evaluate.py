"""The evaluation side: `EvaluateConfig` and the audit, transfer, compare and predict schemas built on it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lungnet.schema.fields import AuditSource, Device, Overlap, opt
from lungnet.schema.loading import LoadConfig
from lungnet.schema.train import BootstrapConfig, EvalDataOverrides, OodFitConfig, PathsConfig


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
class CalibrationConfig:
    bins: int = opt(15, "equal-width bins for ECE and the reliability diagram", ge=1)
    temperature_scaling: bool = opt(True, "fit one temperature on the operating-point split; ECE before/after")


@dataclass
class ReportConfig:
    html: bool = opt(True, "also write report.html with the figures embedded")
    figures: bool = opt(True, "draw the figures")


@dataclass
class DecisionConfig:
    """``evaluate.py decision.*``: the decision file `lungnet.artifacts.decision` writes beside the checkpoint (or
    ``out``)."""

    positive_class: str | None = opt(
        None, "multi-class: this class when it reaches its threshold, else arg-max; null: two-class data -> non-normal"
    )
    write: bool = opt(True, "write <ckpt stem>.decision.json when the operating point is fitted on val")
    refit: bool = opt(
        False, "refit on val even when a decision file fitted on val exists (split=val always refits; others read it)"
    )
    out: str | None = opt(
        None,
        "write the decision file (and the model card the app shows, <stem>.model_card.md) here instead of beside the "
        "checkpoint, e.g. for a read-only model folder; predict.py and the app: decision=<this file>",
    )


@dataclass
class ConformalConfig:
    alpha: float = opt(0.1, "prediction sets hold the true label with probability >= 1 - alpha", gt=0, lt=1)


@dataclass
class AbstainConfig:
    below: float | None = opt(None, "abstain when the calibrated top probability is below this (null: off)", ge=0, le=1)
    ambiguous: bool = opt(True, "abstain when the prediction set holds more than one label (an empty one: a note)")


@dataclass
class OodConfig(OodFitConfig):
    """``evaluate.py ood.*``: how the OOD gate is fitted (`OodFitConfig`, as training fits it), and when refitted."""

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
        "the probe's sources: auto (the data sets of a data=multi model, else folders below the class folders, else "
        "image size), folder, size, none",
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


def heatmap_alpha() -> Any:
    """The heatmap overlays' opacity, one default for evaluate's report and predict's overlays."""
    return opt(0.45, "heatmap opacity in the overlays", ge=0, le=1)


@dataclass
class EvaluateConfig:
    ckpt: Any = opt(
        help="the checkpoint to evaluate; an ensemble: [a.ckpt,b.ckpt,...], a multirun dir (its fold models) or an "
        "ensemble.json"
    )
    split: str = opt(
        "test",
        "test val train, or all: every image at data.root in the layout of the checkpoint's data set (or data=): "
        "<class>/ folders, or for NIH Data_Entry_2017.csv and its images",
    )
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
    alpha: float = heatmap_alpha()
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
class LosoConfig(TransferConfig):
    """``lungnet-loso``: leave one source out (`lungnet.evaluation.loso`), on the transfer options."""

    runs: Any = opt(
        help="the trained models: run directories, checkpoints or multirun directories holding, for each held-out "
        "set, a model trained on all the others and one trained on it alone (and one on all of them)"
    )
    split: str = opt(
        "auto",
        "the held-out images: the single-source run's auto (its test split when it has one, else val), val or test",
    )
    findings: list[str] | None = opt(None, "score every row on these findings only (else those all its models share)")
    overlap: Overlap = opt(
        Overlap.drop,
        "copies of the other models' training or validation images among the held-out ones: drop (left out for "
        "every model, counted), refuse (no numbers for a model that saw them) or allow (kept, counted)",
    )


@dataclass
class CompareConfig(EvaluateConfig):
    runs: Any = opt(help="a multirun dir, a run dir, a checkpoint, or a list of them")
    ckpt: str | None = opt(None, "set per model from runs")
    allow_different_images: bool = opt(False, "compare even when the models saw different images (not fair)")


@dataclass
class PredictConfig(LoadConfig):
    """``predict.py``: `LoadConfig` (the model and how it is loaded), the files to classify and how."""

    input: str = opt(help="an image/DICOM file, a folder (searched recursively) or a glob")
    alpha: float = heatmap_alpha()
    batch_size: int = opt(16, "images per batch", ge=1)
    num_workers: int | None = opt(
        None,
        "processes that read, hash, decode and preprocess the files (0: none, all in the main process; "
        "null: min(4, CPU cores))",
        ge=0,
    )
    explain: dict[str, Any] | None = opt(None, help="heatmap overlays (conf/explain/)")
    paths: PathsConfig = opt(factory=PathsConfig)
