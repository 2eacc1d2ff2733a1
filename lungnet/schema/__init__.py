"""Structured configs: the one place that states every option's type, valid choices, range and default.

The dataclasses are registered in Hydra's ConfigStore (`register`, run when ``lungnet`` is imported) and the
YAML files build on them: ``conf/data/*.yaml`` and ``conf/model/*.yaml`` start from ``_base`` (`DataConfig`,
`ModelConfig`) and state only what differs; every command's ``conf/<name>.yaml`` (train, evaluate, compare,
predict, audit, transfer, loso, prepare, app, export, explain, crossval) starts from ``<name>_schema`` (`SCHEMAS`) and
states no option's default: the values are the schema's. Hydra then refuses a value of the wrong type or an
unknown choice while composing, before any file is written. Ranges (``image_size >= 8``, fractions in
[0, 1)) are not types: they live in each field's metadata and `lungnet.config_checks.check_ranges` enforces
them. Old checkpoints' data configs get their missing keys from `data_defaults`.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from lungnet.schema.crossval import CrossvalConfig
from lungnet.schema.evaluate import (
    AbstainConfig,
    AuditAppConfig,
    AuditConfig,
    BootstrapConfig,
    CalibrationConfig,
    CompareConfig,
    ConformalConfig,
    DecisionConfig,
    EvaluateConfig,
    LosoConfig,
    OodConfig,
    OperatingPointConfig,
    PredictConfig,
    ReportConfig,
    SubgroupsConfig,
    TransferConfig,
)
from lungnet.schema.explain import ExplainConfig, ExplainData, ExplainMethod, ExplainOptions, Score
from lungnet.schema.fields import (
    MAX_IMAGE_SIZE,
    AuditSource,
    Balance,
    Choice,
    Device,
    Mode,
    OnBadFile,
    Overlap,
    Precision,
    Resize,
    Runtime,
    Select,
    opt,
)
from lungnet.schema.loading import LoadConfig
from lungnet.schema.prepare import PrepareConfig
from lungnet.schema.serve import AppConfig, ExportConfig, ExportFormat, Int8Weights, LogLevel
from lungnet.schema.train import (
    RENAMED,
    CheckpointConfig,
    DataConfig,
    EarlyStoppingConfig,
    EMAConfig,
    EvalDataOverrides,
    FinetuneConfig,
    MixupConfig,
    ModelConfig,
    OodFitConfig,
    PathsConfig,
    PrecisionAutoConfig,
    SWAConfig,
    TrainConfig,
    data_defaults,
    with_data_defaults,
)

__all__ = [
    "MAX_IMAGE_SIZE",
    "Choice",
    "opt",
    "Resize",
    "Balance",
    "OnBadFile",
    "Mode",
    "Select",
    "Device",
    "Runtime",
    "AuditSource",
    "Overlap",
    "Precision",
    "EvalDataOverrides",
    "DataConfig",
    "ModelConfig",
    "PathsConfig",
    "CheckpointConfig",
    "EarlyStoppingConfig",
    "FinetuneConfig",
    "EMAConfig",
    "SWAConfig",
    "MixupConfig",
    "PrecisionAutoConfig",
    "TrainConfig",
    "OperatingPointConfig",
    "BootstrapConfig",
    "CalibrationConfig",
    "ReportConfig",
    "DecisionConfig",
    "ConformalConfig",
    "AbstainConfig",
    "OodConfig",
    "OodFitConfig",
    "AuditConfig",
    "SubgroupsConfig",
    "EvaluateConfig",
    "AuditAppConfig",
    "TransferConfig",
    "LosoConfig",
    "CompareConfig",
    "PredictConfig",
    "PrepareConfig",
    "LoadConfig",
    "AppConfig",
    "ExportConfig",
    "ExportFormat",
    "Int8Weights",
    "LogLevel",
    "ExplainConfig",
    "ExplainData",
    "ExplainMethod",
    "ExplainOptions",
    "Score",
    "CrossvalConfig",
    "RENAMED",
    "SCHEMAS",
    "data_defaults",
    "register",
    "with_data_defaults",
]

SCHEMAS = {
    "train": TrainConfig,
    "evaluate": EvaluateConfig,
    "compare": CompareConfig,
    "predict": PredictConfig,
    "audit": AuditAppConfig,
    "transfer": TransferConfig,
    "loso": LosoConfig,
    "prepare": PrepareConfig,
    "app": AppConfig,
    "export": ExportConfig,
    "explain": ExplainConfig,
    "crossval": CrossvalConfig,
}


def register() -> None:
    """Stores the schemas in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        cs.store(name=f"{name}_schema", node=node)
    cs.store(group="data", name="_base", node=DataConfig)
    cs.store(group="model", name="_base", node=ModelConfig)
    cs.store(group="paths", name="_base", node=PathsConfig)


register()
