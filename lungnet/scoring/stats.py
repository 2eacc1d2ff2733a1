"""Statistics on predicted probabilities: bootstrap confidence intervals, operating points, calibration.

Everything here works on plain arrays, so it is shared by ``evaluate`` and ``compare`` and tested on
fixed synthetic predictions:

- `bootstrap_ci`: seeded percentile bootstrap of accuracy, macro precision / recall / F1 / AUROC and
  loss (multi-label: macro and per-finding AUROC, macro F1).
- `paired_bootstrap`: the difference between two models' metrics on the same images, with its interval.
- `fit_operating_point` / `apply_operating_point`: the threshold that reaches a target sensitivity,
  one-vs-rest per class (or for one positive class), fitted on one split and applied to another.
- `reliability_bins` / `expected_calibration_error` / `fit_temperature`: calibration.

Single-label ``targets`` are class indices (N,); multi-label ``targets`` are (N, C) floats with NaN for
unknown labels, which are ignored everywhere.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.stats import rankdata
from sklearn.metrics import roc_curve

from lungnet.data.labels import DEFAULT_THRESHOLD
from lungnet.scoring.metrics import macro
from lungnet.scoring.weighted import EPS, resampled_headlines

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- point metrics
def binary_auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve from ranks (Mann-Whitney U); NaN when only one class is present.

    Equal to ``sklearn.metrics.roc_auc_score`` (ties count one half) but about 20 times faster, which
    matters inside a 1000-resample bootstrap.
    """
    y = np.asarray(y).astype(bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def one_vs_rest(targets: np.ndarray, num_classes: int, multilabel: bool) -> np.ndarray:
    """(N, C) float targets: one-hot for single-label, the targets (NaN: unknown) for multi-label."""
    if multilabel:
        return np.asarray(targets, dtype=np.float64)
    return np.eye(num_classes)[np.asarray(targets, dtype=np.int64)]


def per_class_auroc(probs: np.ndarray, targets: np.ndarray, multilabel: bool) -> np.ndarray:
    """One-vs-rest AUROC per class (NaN where a class has no positives or no negatives)."""
    onehot = one_vs_rest(targets, probs.shape[1], multilabel)
    if not np.isnan(onehot).any():  # all columns at once (the common case; fast inside the bootstrap)
        pos = onehot.astype(bool)
        n_pos = pos.sum(0)
        n_neg = len(onehot) - n_pos
        ranks = rankdata(probs, axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            area = ((ranks * pos).sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
        return np.where((n_pos > 0) & (n_neg > 0), area, np.nan)
    out = np.full(probs.shape[1], np.nan)
    for j in range(probs.shape[1]):
        known = ~np.isnan(onehot[:, j])
        out[j] = binary_auroc(onehot[known, j], probs[known, j])
    return out


def log_loss(probs: np.ndarray, targets: np.ndarray, multilabel: bool) -> float:
    """Mean cross-entropy (single-label) or binary cross-entropy over known labels (multi-label).

    Unweighted and without label smoothing, so it can differ from the training loss.
    """
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    if multilabel:
        t = np.asarray(targets, dtype=np.float64)
        known = ~np.isnan(t)
        if not known.any():
            return float("nan")
        bce = -(t[known] * np.log(p[known]) + (1 - t[known]) * np.log(1 - p[known]))
        return float(bce.mean())
    idx = np.asarray(targets, dtype=np.int64)
    return float(-np.log(p[np.arange(len(idx)), idx]).mean()) if len(idx) else float("nan")


def _counts(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-column TP, FP, FN, TN of boolean (N, C) predictions against (N, C) truth (NaN: ignored)."""
    known = ~np.isnan(truth)
    pos = (truth == 1) & known
    neg = (truth == 0) & known
    return (
        (pred & pos).sum(0).astype(np.float64),
        (pred & neg).sum(0).astype(np.float64),
        (~pred & pos).sum(0).astype(np.float64),
        (~pred & neg).sum(0).astype(np.float64),
    )


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def threshold_metrics(
    probs: np.ndarray, targets: np.ndarray, multilabel: bool, thresholds: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Per-class precision, recall (sensitivity), specificity and F1 of the hard decisions.

    Single-label decisions are the arg-max; multi-label decisions are ``p >= threshold``
    (`lungnet.data.labels.DEFAULT_THRESHOLD` by default).
    Classes without positives get 0 (scikit-learn's ``zero_division=0``).
    """
    c = probs.shape[1]
    truth = one_vs_rest(targets, c, multilabel)
    if multilabel:
        thr = np.full(c, DEFAULT_THRESHOLD) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
        pred = probs >= thr
    else:
        pred = np.eye(c, dtype=bool)[probs.argmax(1)]
    tp, fp, fn, tn = _counts(pred, truth)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {
        "precision": precision,
        "recall": recall,
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "support": tp + fn,
    }


def headline(
    probs: np.ndarray, targets: np.ndarray, multilabel: bool, auroc: np.ndarray | None = None
) -> dict[str, float]:
    """The numbers that get confidence intervals: accuracy (single-label), macro P/R/F1/AUROC, loss.

    Args:
        auroc: per-class AUROC when already computed (saves recomputing it).
    """
    per = threshold_metrics(probs, targets, multilabel)
    auroc = per_class_auroc(probs, targets, multilabel) if auroc is None else auroc
    out = {
        "precision_macro": macro(per["precision"], per["support"] > 0),
        "recall_macro": macro(per["recall"], per["support"] > 0),
        "f1_macro": macro(per["f1"], per["support"] > 0),
        "auroc_macro": float(np.nanmean(auroc)) if np.isfinite(auroc).any() else float("nan"),
        "loss": log_loss(probs, targets, multilabel),
    }
    if not multilabel:
        out = {"accuracy": float((probs.argmax(1) == np.asarray(targets)).mean()), **out}
    return out


# ----------------------------------------------------------------------------- bootstrap
def percentile_interval(draws, level: float) -> tuple[float, float]:
    """Percentile interval of the finite bootstrap ``draws`` at coverage ``level`` (NaN, NaN when none is finite)."""
    draws = np.asarray(draws, dtype=np.float64)
    finite = draws[np.isfinite(draws)]
    if not len(finite):
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    lo, hi = np.quantile(finite, [alpha, 1 - alpha])
    return float(lo), float(hi)


def bootstrap_ci(
    probs: np.ndarray,
    targets: np.ndarray,
    labels: list[str],
    multilabel: bool,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    groups: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """Percentile bootstrap confidence intervals (images, or with ``groups`` whole patients, resampled).

    Args:
        probs: (N, C) probabilities.
        targets: (N,) class indices or (N, C) multi-label targets (NaN: unknown).
        labels: class names (multi-label: per-finding AUROC intervals are keyed ``auroc/<label>``).
        multilabel: target layout.
        resamples: number of bootstrap resamples.
        seed: random seed; the same seed gives the same intervals.
        level: coverage of the interval.
        groups: (N,) patient per image (`lungnet.scoring.resample.Resampler`); None resamples images.

    Returns:
        ``{metric: {"value", "lo", "hi", "resamples"}}`` where ``value`` is the estimate on all data and
        ``resamples`` counts the resamples on which the metric was defined (AUROC needs both classes).
    """
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets)
    rng = np.random.default_rng(seed)

    def stats(p: np.ndarray, t: np.ndarray) -> dict[str, float]:
        auroc = per_class_auroc(p, t, multilabel)
        values = headline(p, t, multilabel, auroc)
        if multilabel:
            values.update({f"auroc/{lab}": float(a) for lab, a in zip(labels, auroc, strict=True)})
        return values

    point = stats(probs, targets)
    # all resamples at once from multiplicity weights (the same draws and numbers as rescoring each resample)
    [(draws, auroc)] = resampled_headlines([probs], targets, multilabel, resamples, rng, groups)
    if multilabel:
        draws.update({f"auroc/{lab}": auroc[:, j] for j, lab in enumerate(labels)})
    out = {}
    for key, value in point.items():
        lo, hi = percentile_interval(draws[key], level)
        out[key] = {"value": value, "lo": lo, "hi": hi, "resamples": int(np.isfinite(draws[key]).sum())}
    return out


def paired_bootstrap(
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    targets: np.ndarray,
    multilabel: bool,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    groups: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """Differences A - B of the headline metrics of two models' predictions for the same images.

    Each resample draws the images once and scores both models on them, so the interval reflects how much
    the two differ on the same data (much narrower than comparing two separate intervals).

    Args:
        probs_a: (N, C) probabilities of model A.
        probs_b: (N, C) probabilities of model B for the same N images, in the same order.
        targets: as in `bootstrap_ci`.
        multilabel: target layout.
        resamples: number of bootstrap resamples.
        seed: random seed.
        level: coverage of the interval.
        groups: as in `bootstrap_ci` (whole patients resampled).

    Returns:
        ``{metric: {"a", "b", "diff", "lo", "hi", "resamples", "a_better"}}``: both point values, their difference
        with its percentile interval, and the share of resamples in which A scored higher (for ``loss``, lower).
    """
    probs_a, probs_b = np.asarray(probs_a, dtype=np.float64), np.asarray(probs_b, dtype=np.float64)
    targets = np.asarray(targets)
    if probs_a.shape != probs_b.shape or len(probs_a) != len(targets):
        raise ValueError(f"Paired predictions need the same images: shapes {probs_a.shape}, {probs_b.shape}")
    point_a, point_b = headline(probs_a, targets, multilabel), headline(probs_b, targets, multilabel)
    rng = np.random.default_rng(seed)
    (a, _), (b, _) = resampled_headlines([probs_a, probs_b], targets, multilabel, resamples, rng, groups)
    out = {}
    for key in point_a:
        diff = a[key] - b[key]
        finite = diff[np.isfinite(diff)]
        lo, hi = percentile_interval(finite, level)
        better = (finite < 0) if key == "loss" else (finite > 0)
        out[key] = {
            "a": point_a[key],
            "b": point_b[key],
            "diff": point_a[key] - point_b[key],
            "lo": lo,
            "hi": hi,
            "resamples": len(finite),
            "a_better": float(better.mean()) if len(finite) else float("nan"),
        }
    return out


# ----------------------------------------------------------------------------- operating point
def sensitivity_threshold(y: np.ndarray, score: np.ndarray, target: float) -> float:
    """The highest threshold whose sensitivity (``score >= threshold``) reaches ``target``.

    The highest such threshold keeps specificity as high as possible. NaN when ``y`` has no positives.
    """
    y = np.asarray(y).astype(bool)
    if not y.any():
        return float("nan")
    if y.all():
        return float(np.min(score))
    fpr, tpr, thr = roc_curve(y, score, drop_intermediate=False)
    ok = np.flatnonzero(tpr >= target - 1e-12)
    return float(min(thr[ok[0]], 1.0))


def sens_spec(y: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float]:
    """Sensitivity and specificity of ``score >= threshold`` against binary ``y``."""
    y = np.asarray(y).astype(bool)
    pred = np.asarray(score) >= threshold
    pos, neg = int(y.sum()), int((~y).sum())
    return {
        "sensitivity": float((pred & y).sum() / pos) if pos else float("nan"),
        "specificity": float((~pred & ~y).sum() / neg) if neg else float("nan"),
        "positives": pos,
        "negatives": neg,
    }


def operating_classes(labels: list[str], positive_class: str | None) -> list[int]:
    """Indices of the classes that get a threshold (all, or the one named positive class).

    Raises:
        ValueError: ``positive_class`` is not one of ``labels``.
    """
    if positive_class is None:
        return list(range(len(labels)))
    if positive_class not in labels:
        raise ValueError(f"operating_point.positive_class={positive_class!r} is not one of the labels {labels}")
    return [labels.index(positive_class)]


def fit_operating_point(
    probs: np.ndarray,
    targets: np.ndarray,
    labels: list[str],
    multilabel: bool,
    target_sensitivity: float = 0.95,
    positive_class: str | None = None,
) -> dict[str, float]:
    """Per-class thresholds (one-vs-rest) that reach ``target_sensitivity`` on this data.

    Returns:
        ``{label: threshold}`` for every class, or only for ``positive_class``.
    """
    truth = one_vs_rest(targets, len(labels), multilabel)
    out = {}
    for j in operating_classes(labels, positive_class):
        known = ~np.isnan(truth[:, j])
        out[labels[j]] = sensitivity_threshold(truth[known, j], probs[known, j], target_sensitivity)
    return out


def apply_operating_point(
    probs: np.ndarray, targets: np.ndarray, labels: list[str], multilabel: bool, thresholds: dict[str, float]
) -> dict[str, dict[str, float]]:
    """Sensitivity and specificity of each class's threshold on this data (one-vs-rest)."""
    truth = one_vs_rest(targets, len(labels), multilabel)
    out = {}
    for lab, thr in thresholds.items():
        j = labels.index(lab)
        known = ~np.isnan(truth[:, j])
        out[lab] = {"threshold": thr, **sens_spec(truth[known, j], probs[known, j], thr)}
    return out


# ----------------------------------------------------------------------------- calibration
def calibration_pairs(probs: np.ndarray, targets: np.ndarray, multilabel: bool) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, outcome) pairs for calibration.

    Single-label: top-label confidence and whether the arg-max is right. Multi-label: every known
    (image, finding) probability and whether the finding is present.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if multilabel:
        t = np.asarray(targets, dtype=np.float64)
        known = ~np.isnan(t)
        return probs[known], t[known]
    return probs.max(1), (probs.argmax(1) == np.asarray(targets)).astype(np.float64)


def reliability_bins(confidence: np.ndarray, outcome: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Equal-width bins over [0, 1]: count, mean confidence and observed frequency per bin (NaN: empty)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins).astype(np.float64)
    safe = np.maximum(count, 1)
    conf = np.where(count > 0, np.bincount(which, confidence, n_bins) / safe, np.nan)
    freq = np.where(count > 0, np.bincount(which, outcome, n_bins) / safe, np.nan)
    return {"edges": edges, "count": count, "confidence": conf, "frequency": freq}


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, multilabel: bool, n_bins: int = 15) -> float:
    """ECE: the count-weighted mean gap between confidence and observed frequency over equal-width bins."""
    conf, outcome = calibration_pairs(probs, targets, multilabel)
    if not len(conf):
        return float("nan")
    bins = reliability_bins(conf, outcome, n_bins)
    full = bins["count"] > 0
    gaps = np.abs(bins["confidence"][full] - bins["frequency"][full])
    return float((gaps * bins["count"][full]).sum() / bins["count"].sum())


def to_logits(probs: np.ndarray, multilabel: bool) -> np.ndarray:
    """Logits recovered from probabilities (log-probabilities for softmax, which differ by a constant per row)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p / (1 - p)) if multilabel else np.log(p)


def scale_probs(probs: np.ndarray, temperature: float, multilabel: bool) -> np.ndarray:
    """Probabilities after dividing the logits by ``temperature``."""
    z = to_logits(probs, multilabel) / temperature
    if multilabel:
        return 1 / (1 + np.exp(-z))
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def fit_temperature(probs: np.ndarray, targets: np.ndarray, multilabel: bool) -> float:
    """The temperature (one for all classes) that minimises the cross-entropy on this data (Guo et al. 2017)."""

    def nll(log_t: float) -> float:
        return log_loss(scale_probs(probs, float(np.exp(log_t)), multilabel), targets, multilabel)

    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))
