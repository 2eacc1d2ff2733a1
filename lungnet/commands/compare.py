"""``lungnet-compare`` / ``python compare.py``: compares checkpoints on the same images (``conf/compare.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from lungnet.commands.wrapper import hydra_app


@hydra_app("compare")
def main(cfg: DictConfig, run_dir: Path) -> Any:
    """Evaluates every checkpoint ``cfg.runs`` names on the same images (`lungnet.evaluation.compare.compare`)."""
    from lungnet.evaluation.compare import compare

    return compare(cfg, run_dir)


if __name__ == "__main__":
    main()
