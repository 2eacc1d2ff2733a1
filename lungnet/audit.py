"""Shortcut audit of a checkpoint: python -m lungnet.audit ckpt=<path> [split=val] [data.root=<folder>] [data=<B>]

A Hydra app (``--help``, ``hydra.run.dir=``; config ``conf/audit.yaml``, which extends ``conf/evaluate.yaml``): the
checkpoint's images (its validation split by default; ``split=all data.root=<folder>`` for a folder;
``data=<another data set>`` for an external one, as in ``evaluate.py``) are audited as in
`lungnet.evaluation.audit`, and ``audit.md``, ``audit.json``, ``audit.png`` and ``audit_views.png`` are written.
Every ``evaluate.py`` report carries the same section unless ``audit=false``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lungnet.errors import ConfigError

log = logging.getLogger("lungnet.audit")


def audit(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Audits ``cfg.ckpt`` on ``cfg.split`` and writes the audit files into ``run_dir``.

    Returns:
        The content of audit.json.

    Raises:
        ConfigError: the audit is switched off (``audit=false``) in the config.
    """
    from lungnet.checkpoint import load_model
    from lungnet.evaluation.audit_report import as_device, audit_evaluation, audit_json, audit_options
    from lungnet.evaluation.run import build_eval_data
    from lungnet.io import write_json, write_text

    opts = audit_options(cfg)
    if opts is None:
        raise ConfigError("audit=false switches the audit off: nothing to do (drop audit=false)")
    run_dir = Path(run_dir)
    loaded = load_model(cfg.ckpt)
    dm = build_eval_data(loaded, OmegaConf.to_container(cfg.data, resolve=True), str(cfg.split), run_dir)
    result = audit_evaluation(loaded, dm, str(cfg.split), opts, run_dir, as_device(cfg))
    ext = getattr(dm, "external", None)
    data = ext.evaluated_on if ext else loaded.data.get("name")
    title = f"# Shortcut audit: {loaded.spec.name} ({Path(cfg.ckpt)}) on {data} ({cfg.split} split)"
    write_text(
        run_dir / "audit.md", f"{title}\n\nlungnet is a research tool, not a medical device.\n\n" + result["markdown"]
    )
    out = {"checkpoint": str(Path(cfg.ckpt).resolve()), "data_name": data, **audit_json(result)}
    write_json(run_dir / "audit.json", out)
    for row in result["classes"]:
        log.info("%s: %s %s", row["class"], row["verdict"], "; ".join(row["reasons"]))
    log.info("Wrote audit.md, audit.json and figures to %s", run_dir)
    return out


@hydra.main(version_base="1.3", config_path="../conf", config_name="audit")
def main(cfg: DictConfig) -> None:
    from lungnet.cli import run_safely

    run_safely(audit, cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
