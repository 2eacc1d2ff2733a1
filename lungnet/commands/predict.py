"""``lungnet-predict`` / ``python predict.py``: classifies image files (``conf/predict.yaml``)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from lungnet.commands.wrapper import hydra_app


@hydra_app("predict")
def main(cfg: DictConfig, run_dir: Path) -> Path:
    """Classifies the files ``cfg.input`` names (`lungnet.serve.predict_batch.run_batch`); returns predictions.csv."""
    from lungnet.serve.predict_batch import run_batch

    return run_batch(cfg, run_dir)


if __name__ == "__main__":
    main()
