"""``lungnet-evaluate`` / ``python evaluate.py``: evaluates a checkpoint or an ensemble (``conf/evaluate.yaml``)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from lungnet.commands.wrapper import hydra_app


@hydra_app("evaluate")
def main(cfg: DictConfig, run_dir: Path) -> dict:
    """Evaluates ``cfg.ckpt`` on ``cfg.split`` (`lungnet.evaluation.pipeline.evaluate`); returns metrics.json."""
    from lungnet.evaluation.pipeline import evaluate

    return evaluate(cfg, run_dir)


if __name__ == "__main__":
    main()
