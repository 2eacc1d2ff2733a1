"""``lungnet-audit`` / ``python -m lungnet.audit``: the shortcut audit of a checkpoint (``conf/audit.yaml``)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from lungnet.commands.wrapper import hydra_app


@hydra_app("audit")
def main(cfg: DictConfig, run_dir: Path) -> dict:
    """Audits ``cfg.ckpt`` on ``cfg.split`` (`lungnet.evaluation.audit_job.audit`); returns audit.json."""
    from lungnet.evaluation.audit_job import audit

    return audit(cfg, run_dir)


if __name__ == "__main__":
    main()
