"""Metrics per data set of a ``data=multi`` run (`lungnet.data.multi`): each set's images scored alone, beside the
pooled numbers, in ``metrics.json`` under the set's name; and the ``source`` column of the predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lungnet.scoring.metrics import compute_metrics


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


def per_source_metrics(probs: np.ndarray, targets: np.ndarray, labels: list[str], sources: list[str]) -> dict:
    """``{set: metrics}`` over each set's images alone (`known_metrics`: a finding the set does not annotate is not
    scored there, and listed under ``unknown``)."""
    names = np.asarray(sources)
    return {
        name: known_metrics(np.asarray(probs)[names == name], np.asarray(targets)[names == name], labels)
        for name in dict.fromkeys(sources)
    }
