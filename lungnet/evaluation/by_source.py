"""Metrics per data set of a ``data=multi`` run (`lungnet.data.multi`): each set's images scored alone, beside the
pooled numbers, in ``metrics.json`` under the set's name (with bootstrap intervals when an evaluation asks for them);
the ``source`` column of the predictions; and the "Per data set" section of the evaluation report."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from lungnet.evaluation.report import fmt, fmt_ci, table
from lungnet.scoring import stats
from lungnet.scoring.metrics import compute_metrics

log = logging.getLogger(__name__)

CI_COLUMNS = (("auroc_macro", "AUROC macro"), ("f1_macro", "F1 macro"), ("loss", "loss"))


def source_column(table: pd.DataFrame | None, paths: list[str]) -> list[str] | None:
    """The data set of each of ``paths`` (rows of a merged table with a ``source`` column), else None."""
    if table is None or "source" not in table:
        return None
    named = dict(zip(table["path"].astype(str), table["source"].astype(str), strict=True))
    return [named.get(str(p), "") for p in paths]


def known_metrics(probs: np.ndarray, targets: np.ndarray, labels: list[str]) -> dict:
    """Multi-label `lungnet.scoring.metrics.compute_metrics` over the findings with a known target among these images;
    ``unknown`` lists the others (no image of theirs annotates them: nothing to score)."""
    probs, targets = np.asarray(probs), np.asarray(targets, dtype=np.float32)
    known = ~np.isnan(targets).all(0) if len(targets) else np.zeros(len(labels), dtype=bool)
    cols = np.flatnonzero(known)
    names = [labels[j] for j in cols]
    out = compute_metrics(probs[:, cols], targets[:, cols], names, multilabel=True) if len(cols) else {"n": len(probs)}
    out["unknown"] = [lab for lab, k in zip(labels, known, strict=True) if not k]
    return out


def source_ci(probs: np.ndarray, targets: np.ndarray, labels: list[str], boot: dict, groups=None) -> dict:
    """`lungnet.scoring.stats.bootstrap_ci` of one set's images over the findings it annotates (``boot``: the
    ``bootstrap`` options; ``groups``: its patients, resampled whole)."""
    targets = np.asarray(targets, dtype=np.float32)
    cols = np.flatnonzero(~np.isnan(targets).all(0)) if len(targets) else np.zeros(0, dtype=int)
    if not len(cols):
        return {}
    return stats.bootstrap_ci(
        np.asarray(probs)[:, cols],
        targets[:, cols],
        [labels[j] for j in cols],
        True,
        int(boot["resamples"]),
        int(boot["seed"]),
        float(boot["level"]),
        groups=groups,
    )


def per_source_metrics(
    probs: np.ndarray,
    targets: np.ndarray,
    labels: list[str],
    sources: list[str],
    boot: dict | None = None,
    groups: np.ndarray | None = None,
) -> dict:
    """``{set: metrics}`` over each set's images alone (`known_metrics`: a finding the set does not annotate is not
    scored there, and listed under ``unknown``); with ``boot`` (the ``bootstrap`` options) each set also gets its
    ``confidence_intervals`` (`source_ci`, patients resampled whole where ``groups`` names them)."""
    names = np.asarray(sources)
    out = {}
    for name in dict.fromkeys(sources):
        mask = names == name
        p, t = np.asarray(probs)[mask], np.asarray(targets)[mask]
        out[name] = known_metrics(p, t, labels)
        if boot is not None:
            out[name]["confidence_intervals"] = source_ci(p, t, labels, boot, None if groups is None else groups[mask])
    return out


def evaluated_sources(predictions: pd.DataFrame | None) -> list[str]:
    """The data sets of an evaluation's predictions (in order of appearance); empty without a ``source`` column."""
    if predictions is None or "source" not in predictions:
        return []
    return [s for s in dict.fromkeys(predictions["source"].astype(str)) if s]


def per_source_markdown(result: dict, sources: list[str]) -> str:
    """The "Per data set" report section: pooled and per-set headline metrics with their bootstrap intervals."""
    level = float((result.get("bootstrap") or {}).get("level", 0.95))
    header = ["data set", "n", *(f"{name} [{level:.0%} CI]" for _, name in CI_COLUMNS), "findings not annotated"]
    rows = [["all (pooled)", str(result.get("n")), *_ci_cells(result), ""]]
    for name in sources:
        part = result.get(name) or {}
        rows.append([name, str(part.get("n")), *_ci_cells(part), ", ".join(part.get("unknown") or []) or "-"])
    return (
        "## Per data set\n\n"
        "Each data set's images scored alone, over the findings it annotates (macro over those), with percentile "
        "bootstrap intervals over its own images (whole patients where the data name them). A pooled number can hide "
        "a set the model does poorly on, and a gap between sets can be the sets' case mix as much as the model.\n\n"
        + table(header, rows)
        + "\n"
    )


def _ci_cells(metrics: dict) -> list[str]:
    cis = metrics.get("confidence_intervals") or {}
    return [fmt_ci(cis[key]) if key in cis else fmt(metrics.get(key)) for key, _ in CI_COLUMNS]


def add_per_source(ev) -> None:
    """Report step of `lungnet.evaluation.pipeline`: the "Per data set" section when the predictions come from two or
    more data sets (``data=multi``)."""
    sources = evaluated_sources(ev.table)
    if len(sources) < 2:
        return
    ev.sections.append(per_source_markdown(ev.result, sources))
    log.info("Per data set metrics for %s", ", ".join(sources))
