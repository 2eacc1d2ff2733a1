"""``lungnet-crossval`` / ``python -m lungnet.evaluation.crossval``: the summary of a k-fold multirun
(``conf/crossval.yaml``)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from lungnet.commands.wrapper import hydra_app


@hydra_app("crossval")
def main(cfg: DictConfig, run_dir: Path) -> Path:
    """Summarises the folds under ``cfg.runs`` (`lungnet.evaluation.folds.run`); returns cv_summary.json."""
    from lungnet.evaluation.folds import run

    return run(cfg)


if __name__ == "__main__":
    main()
