"""Classify images with a trained model: python predict.py ckpt=<path> input=<file|folder|glob> [explain=gradcam]"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import lungnet.schema  # noqa: F401 - registers the structured configs the config builds on


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    from lungnet.cli import run_safely
    from lungnet.inference import run_batch

    run_safely(run_batch, cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    from lungnet.launch import launch

    launch(main)  # config mistakes: one line, exit 2
