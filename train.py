"""Train a chest X-ray classifier: python train.py [data=...] [model=...] [trainer=...] [key=value ...]"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import lungnet.schema  # noqa: F401 - registers the structured configs conf/train.yaml builds on


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from lungnet.cli import run_safely
    from lungnet.training import optimized_value, train

    results = run_safely(train, cfg, HydraConfig.get().runtime.output_dir)
    return optimized_value(results, cfg.optimized_metric)  # what a sweeper (hparams_search) maximises


if __name__ == "__main__":
    from lungnet.launch import launch

    launch(main, replay=True)  # resume=<run dir> replays its overrides; config mistakes: one line, exit 2
