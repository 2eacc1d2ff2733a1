"""Population shift of a batch: a label-free test of whether a batch of images is exchangeable with the images the
OOD gate was thresholded on (the validation split), from the gate's own scores.

Image by image, the gate (`lungnet.scoring.ood`) flags what lies further from the training images than 95 % of val. A
population the model has never seen can pass it image by image: a paediatric PneumoniaMNIST model's gate lets about
half of adult films through (docs/ood_population_shift.md), each of them unremarkable on its own, while the batch's
scores as a whole sit well above val's. So a batch is tested as a whole, against the calibration scores the gate
stores (``reference_scores``; an `lungnet.scoring.ood.ImageGate` per part, features and thumbnail):

- a two-sample Kolmogorov-Smirnov test (scipy) of the batch's scores against them, per part;
- a one-sided binomial test of the number flagged against the rate an exchangeable image is flagged at most:
  ``(k + 1) / (n + 1)`` for ``k`` of the ``n`` calibration images above the threshold (the rank argument of split
  conformal prediction).

Their Bonferroni-combined p-value is the batch's; below ``SHIFT_P`` the batch is said not to be exchangeable with
val, and its per-image decisions (OOD flags, conformal sets) lose what they were calibrated for. A batch of fewer
than ``MIN_BATCH`` scored images is not tested.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import binomtest, ks_2samp

# the start of scipy's RuntimeWarning when ks_2samp's exact p-value fails and it falls back to the asymptotic one
KS_EXACT_FAILED = "ks_2samp: Exact calculation unsuccessful"
SHIFT_P = 0.01  # below this combined p-value a batch (or split: the conformal shift test) is not exchangeable with val
MIN_BATCH = 5  # fewer scored images than this: no test (the p-value is None)
TEST = "Kolmogorov-Smirnov per gate score and binomial on the flag count, against val; Bonferroni"


def references(gate) -> dict[str, np.ndarray]:
    """The calibration scores of each score the gate gives, relative to its threshold (flagged above 1):
    ``{"features": ..., "image": ...}`` for a gate with an image part, else ``{"ood_score": ...}``; empty when the
    gate stores none (a decision file written without them)."""
    parts = {}
    for name in ("features", "image"):
        part = getattr(gate, name, None)
        if part is not None and len(part.reference) and np.isfinite(part.threshold):
            parts[name] = np.asarray(part.reference, dtype=np.float64) / part.threshold
    if parts:
        return parts
    if len(gate.reference) and np.isfinite(gate.threshold):
        return {"ood_score": np.asarray(gate.reference, dtype=np.float64) / gate.threshold}
    return {}


def ks_test(a, b) -> dict:
    """scipy's two-sample KS test: its exact p-value, or where that cannot be computed (scipy then warns and
    switches), the asymptotic one, said in ``pvalue_method`` instead of a warning on the console."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = ks_2samp(a, b)
    method = "exact or asymptotic (scipy's choice by sample size)"
    for w in caught:
        if issubclass(w.category, RuntimeWarning) and str(w.message).startswith(KS_EXACT_FAILED):
            method = "asymptotic (the exact p-value could not be computed)"
        else:  # any other warning goes on as it came
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return {"statistic": float(res.statistic), "pvalue": float(res.pvalue), "pvalue_method": method}


def bonferroni(tests: dict[str, dict]) -> float | None:
    """The Bonferroni-combined p-value of ``tests`` (each with a ``pvalue``), or None when there is none."""
    return min(1.0, len(tests) * min(t["pvalue"] for t in tests.values())) if tests else None


def flag_count_test(flags: np.ndarray, reference: np.ndarray) -> dict:
    """One-sided binomial test: more of the batch flagged than an exchangeable batch would be (``reference``: the
    calibration scores relative to the threshold)."""
    k_ref, n_ref = int((reference > 1).sum()), len(reference)
    expected = (k_ref + 1) / (n_ref + 1)
    flagged = int(flags.sum())
    res = binomtest(flagged, len(flags), expected, alternative="greater")
    return {"flagged": flagged, "expected_rate": float(expected), "pvalue": float(res.pvalue)}


def batch_shift(gate, scores, parts: dict | None = None, level: float = SHIFT_P) -> dict | None:
    """Tests a batch's gate scores against the gate's calibration scores.

    Args:
        gate: the OOD gate (`lungnet.scoring.ood.OodGate`, `ImageGate` or `AnyMemberGate`).
        scores: (N,) the batch's OOD scores (`lungnet.artifacts.decision.Decisions.ood_score`), NaN for unscored images.
        parts: ``{part: (N,) score / its threshold}`` of a gate with an image part (`Decisions.ood_parts`), or None.
        level: below this combined p-value ``shifted`` is True.

    Returns:
        ``{test, n, tests, pvalue, shifted}`` (``pvalue`` None for fewer than ``MIN_BATCH`` images), or None when
        the gate stores no calibration scores.
    """
    refs = references(gate)
    if not refs:
        return None
    scores = np.asarray(scores, dtype=np.float64)
    keep = np.isfinite(scores)
    batch = {k: np.asarray(v, dtype=np.float64)[keep] for k, v in (parts or {}).items() if k in refs}
    if set(batch) != set(refs):  # no part scores given: the combined score against the combined reference
        refs = {"ood_score": np.asarray(gate.reference, dtype=np.float64) / gate.threshold}
        batch = {"ood_score": scores[keep] / gate.threshold}
    n = int(keep.sum())
    out = {"test": TEST, "n": n, "level": float(level), "tests": {}, "pvalue": None, "shifted": False}
    if n < MIN_BATCH or not all(len(r) for r in refs.values()):
        return out
    tests = {f"ks_{k}": ks_test(v, refs[k]) for k, v in batch.items()}
    if len(gate.reference) and np.isfinite(gate.threshold):
        combined = np.asarray(gate.reference, dtype=np.float64) / gate.threshold
        tests["flag_count"] = flag_count_test(scores[keep] / gate.threshold > 1, combined)
    pvalue = bonferroni(tests)
    out.update(tests=tests, pvalue=float(pvalue), shifted=bool(pvalue < level))
    return out
