"""The external-validity sections of an evaluation: the shortcut audit and the subgroup metrics.

`validity_sections` is the one call `lungnet.evaluation.run` makes: it adds ``audit`` and ``subgroups`` to the
result (metrics.json) and returns their report sections. ``audit=false`` and ``subgroups=false`` skip them.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lungnet.checkpoint import LoadedModel
from lungnet.evaluation.audit_report import audit_evaluation, audit_json, audit_options
from lungnet.evaluation.subgroups import subgroup_evaluation


def subgroup_options(cfg: DictConfig, opts: dict, loaded: LoadedModel) -> dict | None:
    """The subgroup settings (``subgroups``, the bootstrap, ECE bins); None when ``subgroups=false``."""
    node = cfg.get("subgroups")
    if node is None or node is False:
        return None
    own = OmegaConf.to_container(node, resolve=True)
    if not own.pop("enabled", True):
        return None
    return {
        **own,
        "bootstrap": opts["bootstrap"],
        "bins": opts["calibration"]["bins"],
        "figures": opts["report"]["figures"],
        "source": loaded.data.get("source"),
    }


def validity_sections(
    cfg: DictConfig,
    opts: dict,
    loaded: LoadedModel,
    dm,
    split: str,
    result: dict,
    arrays: tuple,
    run_dir: Path,
    device: str,
) -> list[str]:
    """Runs the shortcut audit and the subgroup metrics (where enabled and possible); adds them to ``result``.

    Args:
        cfg: the evaluate config; opts: its evaluation options (`lungnet.evaluation.run.options`).
        loaded: the checkpoint; dm: the evaluation's DataModule; split: the evaluated split.
        result: the evaluation result, extended in place with ``audit`` and ``subgroups``.
        arrays: (probabilities, targets, paths) of the evaluated split, as scored.
        run_dir: where figures and ``subgroups.csv`` go; device: where the model runs.

    Returns:
        Markdown sections for the report.
    """
    sections = []
    audit = audit_options(cfg)
    if audit is not None:
        found = audit_evaluation(loaded, dm, split, audit, run_dir, device)
        result["audit"] = audit_json(found)
        sections.append(found["markdown"])
    sub = subgroup_options(cfg, opts, loaded)
    if sub is not None:
        found = subgroup_evaluation(dm, result, *arrays, sub, run_dir)
        if found is not None:
            result["subgroups"] = {"rows": found["rows"], "gaps": found["gaps"]}
            sections.append(found["markdown"])
    return sections
