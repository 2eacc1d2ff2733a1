"""Metrics per data set of a ``data=multi`` run (`lungnet.data.multi`): each set's images scored alone, beside the
pooled numbers, in ``metrics.json`` under the set's name; and the ``source`` column of the predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lungnet.metrics import compute_metrics


def source_column(table: pd.DataFrame | None, paths: list[str]) -> list[str] | None:
    """The data set of each of ``paths`` (rows of a merged table with a ``source`` column), else None."""
    if table is None or "source" not in table:
        return None
    named = dict(zip(table["path"].astype(str), table["source"].astype(str), strict=True))
    return [named.get(str(p), "") for p in paths]


def per_source_metrics(probs: np.ndarray, targets: np.ndarray, labels: list[str], sources: list[str]) -> dict:
    """``{set: metrics}`` over each set's images alone (`lungnet.metrics.compute_metrics`, unknown findings masked;
    a finding the set does not annotate has no AUROC there: NaN)."""
    names = np.asarray(sources)
    out = {}
    for name in dict.fromkeys(sources):
        keep = names == name
        out[name] = compute_metrics(np.asarray(probs)[keep], np.asarray(targets)[keep], labels, multilabel=True)
    return out
