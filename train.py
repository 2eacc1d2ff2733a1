"""Train a chest X-ray classifier: python train.py [data=...] [model=...] [trainer=...] [key=value ...]"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from lungnet.cli import run_safely
    from lungnet.training import train

    results = run_safely(train, cfg, HydraConfig.get().runtime.output_dir)
    return (results.get("val") or {}).get("auroc_macro") if results else None


if __name__ == "__main__":
    main()
