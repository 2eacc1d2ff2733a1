"""``lungnet-train`` / ``python train.py``: trains a model (``conf/train.yaml``, schema
`lungnet.schema.TrainConfig`)."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lungnet.commands.preflight import optimized_value
from lungnet.commands.wrapper import hydra_app, user_error_message

log = logging.getLogger("lungnet")


@hydra_app("train")
def main(cfg: DictConfig, run_dir: Path) -> float | None:
    """Trains a model (`lungnet.train.training.train`); returns the metric ``optimized_metric`` names
    (``val/auroc_macro`` unless a sweep's preset says otherwise) for sweepers.

    In a sweep, a trial whose training diverged is its one logged line and no value (Optuna records a failed trial);
    the other trials go on. A single run exits with status 2.
    """
    from hydra.types import RunMode

    from lungnet.errors import TrainingDiverged
    from lungnet.train.training import train as fit

    try:
        results = fit(cfg, run_dir)
    except TrainingDiverged as exc:
        if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
            raise
        log.error("%s", user_error_message(exc))
        return None
    return optimized_value(results, cfg.optimized_metric)


if __name__ == "__main__":
    main()
