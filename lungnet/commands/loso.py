"""``lungnet-loso`` / ``python -m lungnet.commands.loso``: leave one source out (``conf/loso.yaml``)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from lungnet.commands.wrapper import hydra_app


@hydra_app("loso")
def main(cfg: DictConfig, run_dir: Path) -> dict:
    """Scores each held-out set with the model trained on all the others, beside the models trained on it alone
    and on all of them (`lungnet.evaluation.loso.loso`)."""
    from lungnet.evaluation.loso import loso

    return loso(cfg, run_dir)


if __name__ == "__main__":
    main()
