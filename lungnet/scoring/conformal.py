"""Split-conformal p-values from a sorted calibration set: crepes' non-smoothed p-values in O((n + q) log q).

A test score ``s`` gets ``p = (#{calibration scores >= s} + 1) / (q + 1)`` over the ``q`` calibration scores (the
standard split-conformal rule; a label is in the prediction set at level ``1 - alpha`` when ``p >= alpha``).
``crepes.ConformalClassifier.predict_p(..., smoothing=False)`` computes exactly this, but counts by a Python loop over
every test score against every calibration score: O(n * q), quadratic when a split is scored against itself (the
finish after training, ``evaluate.py split=val``; docs/benchmarks.md has the cost at NIH size). Here the calibration
scores are sorted once and each test score's count is a binary search, giving the same p-values
(`tests/scoring/test_conformal.py` checks them against crepes', ties and NaN included).
"""

from __future__ import annotations

import numpy as np


def p_values(calibration, scores) -> np.ndarray:
    """Non-smoothed conformal p-values of ``scores`` (any shape) against the ``calibration`` scores.

    Args:
        calibration: (q,) nonconformity scores of the calibration images' true labels.
        scores: nonconformity scores to test, any shape.

    Returns:
        p-values of the shape of ``scores``, in ``[1 / (q + 1), 1]``; a NaN score (or calibration score) counts as
        no calibration score at least as large, as in crepes.
    """
    cal = np.asarray(calibration, dtype=np.float64).ravel()
    finite = np.sort(cal[~np.isnan(cal)])
    s = np.asarray(scores, dtype=np.float64)
    at_least = len(finite) - np.searchsorted(finite, s, side="left")  # NaN sorts last: counts 0
    return (at_least + 1) / (len(cal) + 1)


def in_set(calibration, scores, confidence: float) -> np.ndarray:
    """Whether each label whose nonconformity score is in ``scores`` is in its prediction set at ``confidence``
    (``p >= 1 - confidence``, as crepes' ``predict_set``): a bool array of the shape of ``scores``."""
    return p_values(calibration, scores) >= 1 - confidence
