"""The source probe of the shortcut audit: can the model's features tell where an image comes from?

DeGrave et al. (Nature Machine Intelligence 2021) and Zech et al. (PLoS Medicine 2018) found chest X-ray models that
recognise the hospital or data set an image comes from, and so partly predict the disease from the source's case mix.
A cross-validated logistic regression on the model's frozen (pooled backbone) features predicts each image's source:
its data set for a model trained on several (``data=multi``), else a folder or native-size proxy
(`lungnet.evaluation.audit.source_groups`). The folds are stratified by source and, where the images name their
patients, keep each patient's images in one fold (else the probe could learn the patient, not the source). Its
out-of-fold AUROC (one-vs-rest macro over more than two sources), with a percentile bootstrap interval (patients
resampled whole), and its balanced accuracy stand beside chance (0.5, and one over the number of sources). The probe
tells the sources apart when its AUROC reaches ``threshold`` with the interval's lower end above chance.
The source alone predicting each class (the AUROC of each source's class share) is reported too.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from lungnet.scoring import stats
from lungnet.scoring.resample import Resampler

CITATION = "DeGrave et al. 2021; Zech et al. 2018"
PROBE_RESAMPLES = 200  # bootstrap resamples of the out-of-fold AUROC (cheap: no refit)


def probe_auroc(p: np.ndarray, codes: np.ndarray, k: int) -> float:
    """AUROC of out-of-fold probabilities ``p`` (N, k) for sources ``codes``: binary, or one-vs-rest macro."""
    if k == 2:
        return stats.binary_auroc(codes == 1, p[:, 1])
    per = stats.per_class_auroc(p, np.eye(k)[codes], True)
    return float(np.nanmean(per)) if np.isfinite(per).any() else float("nan")


def probe_folds(codes: np.ndarray, patients: np.ndarray | None) -> int:
    """Folds the probe can use: up to 5, no more than the images (or patients) of the smallest source."""
    if patients is None:
        return int(min(5, np.bincount(codes).min()))
    per_source = [len(set(patients[codes == g])) for g in range(codes.max() + 1)]
    return int(min(5, *per_source))


def fit_probe(features: np.ndarray, codes: np.ndarray, patients: np.ndarray | None, folds: int, seed: int):
    """Out-of-fold source probabilities of a standardised, L2-regularised logistic regression."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    if patients is None:
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    else:
        cv = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    return cross_val_predict(probe, features, codes, cv=cv, groups=patients, method="predict_proba")


def probe_interval(p: np.ndarray, codes: np.ndarray, k: int, patients, seed: int, level: float = 0.95) -> list:
    """Percentile bootstrap interval ``[lo, hi]`` of the out-of-fold AUROC (patients resampled whole)."""
    rng, draw = np.random.default_rng(seed), Resampler(len(codes), patients).draw
    draws = [probe_auroc(p[i], codes[i], k) for i in (draw(rng) for _ in range(PROBE_RESAMPLES))]
    return list(stats.percentile_interval(draws, level))


def class_by_source(codes: np.ndarray, truth: np.ndarray, k: int) -> tuple[list, np.ndarray]:
    """Per class, the AUROC of the source alone (each source's share of the class), and the shares (k, C)."""
    known = ~np.isnan(truth)
    share = np.array(
        [
            [np.nanmean(truth[codes == g, c]) if known[codes == g, c].any() else 0.0 for c in range(truth.shape[1])]
            for g in range(k)
        ]
    )
    aurocs = [
        stats.binary_auroc(truth[known[:, c], c] == 1, share[codes[known[:, c]], c]) for c in range(truth.shape[1])
    ]
    return aurocs, share


def source_probe(
    features: np.ndarray,
    groups: np.ndarray,
    truth: np.ndarray,
    seed: int,
    patients: np.ndarray | None = None,
) -> dict:
    """Cross-validated linear probe of the source on frozen features, and how well the source alone predicts each
    class (AUROC of each source's class share).

    Args:
        features: (N, D) frozen features of the images.
        groups: (N,) source of each image.
        truth: (N, C) one-vs-rest targets (NaN: unknown).
        seed: the folds' and the bootstrap's seed.
        patients: (N,) patient of each image (kept in one fold), or None.

    Returns:
        ``sources`` (images per source), ``probe_auroc`` (None with a note when a source is too small),
        ``probe_auroc_ci``, ``balanced_accuracy``, ``chance``, ``folds``, ``class_by_source_auroc``, ``class_share``.
    """
    names, codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    k, counts = len(names), np.bincount(codes)
    patients = None if patients is None else np.asarray(patients).astype(str)
    folds = probe_folds(codes, patients)
    out: dict = {"sources": {str(n): int(c) for n, c in zip(names, counts, strict=True)}, "folds": folds}
    out["chance"] = {"auroc": 0.5, "balanced_accuracy": 1.0 / k}
    if folds < 2:
        out["probe_auroc"] = None
        out["note"] = "a source has fewer than 2 images (or patients): no probe"
    else:
        p = fit_probe(features, codes, patients, folds, seed)
        out["probe_auroc"] = probe_auroc(p, codes, k)
        out["probe_auroc_ci"] = probe_interval(p, codes, k, patients, seed)
        out["balanced_accuracy"] = float(balanced_accuracy_score(codes, p.argmax(1)))
        out["patients_grouped"] = patients is not None
    aurocs, share = class_by_source(codes, truth, k)
    out["class_by_source_auroc"] = aurocs
    out["class_share"] = {str(n): [float(v) for v in row] for n, row in zip(names, share, strict=True)}
    return out


def tells_sources_apart(probe: dict | None, threshold: float) -> bool:
    """The probe's AUROC reaches ``threshold`` and its interval's lower end is above chance."""
    if not probe or probe.get("probe_auroc") is None:
        return False
    lo = (probe.get("probe_auroc_ci") or [float("nan")])[0]
    return bool(probe["probe_auroc"] >= threshold and np.isfinite(lo) and lo > probe["chance"]["auroc"])


def probe_statement(probe: dict, data_sets: bool) -> str:
    """The audit's sentence for a probe that tells the sources apart."""
    what = "data sets" if data_sets else "image sources"
    return (
        f"the model's features tell the {what} apart (source probe AUROC {probe['probe_auroc']:.2f}): part of its "
        f"accuracy may come from the source, not the disease ({CITATION})"
    )
