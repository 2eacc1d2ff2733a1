"""Compare checkpoints on the same split: python compare.py runs=<multirun dir | [ckpt,ckpt,...]> [split=test]

See lungnet/evaluation/compare.py for the outputs and options.
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import lungnet.schema  # noqa: F401 - registers the structured configs the config builds on


@hydra.main(version_base="1.3", config_path="conf", config_name="compare")
def main(cfg: DictConfig) -> None:
    from lungnet.cli import run_safely
    from lungnet.evaluation.compare import compare

    run_safely(compare, cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    from lungnet.launch import launch

    launch(main)  # config mistakes: one line, exit 2
