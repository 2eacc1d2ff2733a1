"""Shortcut audit of a checkpoint: ``python -m lungnet.audit ckpt=<path> [split=val] [data.root=...] [data=<B>]``.

The same command as the console script ``lungnet-audit`` (a Hydra app in `lungnet.commands.wrapper`: ``--help``,
``hydra.run.dir=``; config ``conf/audit.yaml``, options `lungnet.schema.AuditAppConfig`). The checkpoint's images
(its validation split by default; ``split=all data.root=<folder>`` for a folder; ``data=<another data set>`` for an
external one, as in ``evaluate.py``) are audited as in `lungnet.evaluation.audit`, and ``audit.md``,
``audit.json``, ``audit.png`` and ``audit_views.png`` are written
(`audit`). Every ``evaluate.py`` report carries the same section unless ``audit=false``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lungnet.artifacts.checkpoint import load_model
from lungnet.data.datamodule import LungDataModule
from lungnet.errors import ConfigError
from lungnet.evaluation import external
from lungnet.evaluation.audit_report import audit_evaluation, audit_json, audit_options
from lungnet.evaluation.eval_data import build_eval_data
from lungnet.hardware import resolve_device
from lungnet.io import write_json, write_text

log = logging.getLogger("lungnet.evaluation.audit_job")


def audit(cfg: DictConfig, run_dir: str | Path) -> dict:
    """``lungnet-audit``: audits ``cfg.ckpt`` on ``cfg.split``; writes audit.md, audit.json and figures.

    Returns:
        The content of audit.json.

    Raises:
        ConfigError: the audit is switched off (``audit=false``) in the config.
    """
    opts = audit_options(cfg)
    if opts is None:
        raise ConfigError("audit=false switches the audit off: nothing to do (drop audit=false)")
    run_dir = Path(run_dir)
    loaded = load_model(cfg.ckpt)
    dm = build_eval_data(loaded, OmegaConf.to_container(cfg.data, resolve=True), str(cfg.split), run_dir)
    result = audit_evaluation(loaded, dm, str(cfg.split), opts, run_dir, resolve_device(str(cfg.device)))
    ext = getattr(dm, "external", None)
    data = ext.evaluated_on if ext else loaded.data.get("name")
    title = f"# Shortcut audit: {loaded.spec.name} ({Path(cfg.ckpt)}) on {data} ({cfg.split} split)"
    lead = [s.strip() for s in external.lead_sections(data_facts(dm)) if s.strip()]
    parts = [title, "lungnet is a research tool, not a medical device.", *lead, result["markdown"]]
    write_text(run_dir / "audit.md", "\n\n".join(parts))
    out = {"checkpoint": str(Path(cfg.ckpt).resolve()), "data_name": data, **data_facts(dm), **audit_json(result)}
    write_json(run_dir / "audit.json", out)
    for row in result["classes"]:
        log.info("%s: %s %s", row["class"], row["verdict"], "; ".join(row["reasons"]))
    log.info("Wrote audit.md, audit.json and figures to %s", run_dir)
    return out


def data_facts(dm: LungDataModule) -> dict:
    """What the audited images were: the external evaluation (trained on A, evaluated on B) and the overlap check."""
    ext = getattr(dm, "external", None)
    return {"external": ext.summary() if ext else None, "training_overlap": dm.report.get("training_overlap")}
