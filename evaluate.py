"""Evaluate a checkpoint: python evaluate.py ckpt=<path> [split=test|val|train|all] [data.root=<folder>]

Writes metrics.json, predictions.csv, per_class.csv, thresholds.json, confusion_matrix.png, roc.png, pr.png,
reliability.png, report.md and report.html (see lungnet/evaluation/run.py and conf/evaluate.yaml).
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import lungnet.schema  # noqa: F401 - registers the structured configs the config builds on


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from lungnet.cli import run_safely
    from lungnet.evaluation.run import evaluate

    run_safely(evaluate, cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    from lungnet.launch import launch

    launch(main)  # config mistakes: one line, exit 2
