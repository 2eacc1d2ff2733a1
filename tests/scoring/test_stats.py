"""Metrics, bootstrap CIs, operating points and calibration, cross-checked against scikit-learn / torchmetrics."""

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)
from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

from lungnet.scoring import stats
from lungnet.scoring.metrics import compute_metrics, macro

LABELS = ["Normal", "Pneumonia", "Covid"]


@pytest.fixture
def fixed():
    """Fixed, informative but imperfect 3-class predictions (probabilities rounded to create ties)."""
    rng = np.random.default_rng(7)
    y = rng.integers(0, 3, 400)
    logits = rng.normal(size=(400, 3)) + 1.5 * np.eye(3)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return np.round(p, 3), y


@pytest.fixture
def multilabel():
    rng = np.random.default_rng(3)
    y = (rng.random((300, 4)) < [0.1, 0.3, 0.5, 0.2]).astype(float)
    p = np.clip(0.3 * y + 0.7 * rng.random((300, 4)), 0, 1)
    y[rng.random((300, 4)) < 0.05] = np.nan  # unknown labels
    return p, y


def _ovr_macro_auroc(y: np.ndarray, p: np.ndarray) -> float:
    """scikit-learn's one-vs-rest macro AUROC (``multi_class="ovr"``), which needs rows summing to exactly 1."""
    return float(np.mean([roc_auc_score(y == j, p[:, j]) for j in range(p.shape[1])]))


def test_compute_metrics_matches_sklearn(fixed):
    p, y = fixed
    m = compute_metrics(p, y, LABELS, multilabel=False)
    pred = p.argmax(1)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["auroc_macro"] == pytest.approx(_ovr_macro_auroc(y, p), abs=1e-6)
    np.testing.assert_array_equal(m["confusion_matrix"], confusion_matrix(y, pred))
    prec, rec = precision_score(y, pred, average=None), recall_score(y, pred, average=None)
    for j, lab in enumerate(LABELS):
        assert m["per_class"][lab]["precision"] == pytest.approx(prec[j])
        assert m["per_class"][lab]["sensitivity"] == pytest.approx(rec[j])
        spec = recall_score(y != j, pred != j)
        assert m["per_class"][lab]["specificity"] == pytest.approx(spec)


@pytest.mark.filterwarnings("error::UserWarning")
def test_read_only_arrays_from_pandas_score_without_a_warning(fixed):
    """Predictions read back from CSVs are read-only arrays: torch warned that it could not write to them."""
    p, y = (np.array(a) for a in fixed)
    p.setflags(write=False)
    y.setflags(write=False)
    assert compute_metrics(p, y, LABELS, multilabel=False)["n"] == len(y)
    multi = (np.eye(len(LABELS))[y] > 0).astype(np.float32)
    multi.setflags(write=False)
    assert compute_metrics(p.astype(np.float32), multi, LABELS, multilabel=True)["n"] == len(y)


def test_headline_matches_sklearn(fixed):
    p, y = fixed
    h = stats.headline(p, y, multilabel=False)
    pred = p.argmax(1)
    assert h["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert h["precision_macro"] == pytest.approx(precision_score(y, pred, average="macro"))
    assert h["recall_macro"] == pytest.approx(recall_score(y, pred, average="macro"))
    assert h["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert h["auroc_macro"] == pytest.approx(_ovr_macro_auroc(y, p))
    assert h["loss"] == pytest.approx(log_loss(y, p), rel=1e-4)


def test_binary_auroc_matches_sklearn_with_ties_and_is_nan_for_one_class():
    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 2, 200), np.round(rng.random(200), 1)
    assert stats.binary_auroc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert np.isnan(stats.binary_auroc(np.ones(5), s[:5]))


def test_multilabel_auroc_ignores_unknown_labels(multilabel):
    p, y = multilabel
    auroc = stats.per_class_auroc(p, y, multilabel=True)
    for j in range(4):
        known = ~np.isnan(y[:, j])
        assert auroc[j] == pytest.approx(roc_auc_score(y[known, j], p[known, j]))
    per = stats.threshold_metrics(p, y, multilabel=True)
    known = ~np.isnan(y[:, 1])
    assert per["recall"][1] == pytest.approx(recall_score(y[known, 1], p[known, 1] >= 0.5))


def test_bootstrap_ci_contains_estimate_and_is_seeded(fixed):
    p, y = fixed
    a = stats.bootstrap_ci(p, y, LABELS, False, resamples=300, seed=1)
    b = stats.bootstrap_ci(p, y, LABELS, False, resamples=300, seed=1)
    c = stats.bootstrap_ci(p, y, LABELS, False, resamples=300, seed=2)
    for key in ("accuracy", "f1_macro", "auroc_macro"):
        assert a[key]["lo"] < a[key]["value"] < a[key]["hi"], key
        assert a[key] == b[key]
        assert (a[key]["lo"], a[key]["hi"]) != (c[key]["lo"], c[key]["hi"])
    assert a["accuracy"]["value"] == pytest.approx(accuracy_score(y, p.argmax(1)))
    assert 0.02 < a["accuracy"]["hi"] - a["accuracy"]["lo"] < 0.2  # n=400: roughly +-0.05


def test_paired_bootstrap_measures_the_difference_on_the_same_images(fixed):
    p, y = fixed
    rng = np.random.default_rng(5)
    # B: A with 20 of its correct predictions turned wrong (moved to another class), otherwise identical
    b = p.copy()
    right = np.flatnonzero(p.argmax(1) == y)[:20]
    b[right] = np.roll(np.eye(3)[y[right]], 1, axis=1) * 0.9 + 0.05
    out = stats.paired_bootstrap(p, b, y, False, resamples=300, seed=1)
    acc = out["accuracy"]
    assert acc["diff"] == pytest.approx(20 / len(y)) and acc["a"] - acc["b"] == pytest.approx(acc["diff"])
    assert 0 < acc["lo"] < acc["diff"] < acc["hi"] and acc["a_better"] == 1.0
    # paired: narrower than either model's own interval (the shared images cancel out)
    single = stats.bootstrap_ci(p, y, LABELS, False, resamples=300, seed=1)["accuracy"]
    assert acc["hi"] - acc["lo"] < single["hi"] - single["lo"]
    same = stats.paired_bootstrap(p, p, y, False, resamples=50, seed=1)
    assert same["auroc_macro"]["diff"] == same["auroc_macro"]["lo"] == same["auroc_macro"]["hi"] == 0.0
    assert same["loss"]["a_better"] == 0.0
    noise = np.clip(p + rng.normal(0, 0.2, p.shape), 1e-3, None)
    assert stats.paired_bootstrap(p, noise / noise.sum(1, keepdims=True), y, False, resamples=50)["loss"]["diff"] < 0
    with pytest.raises(ValueError, match="same images"):
        stats.paired_bootstrap(p, p[:-1], y, False)


def test_bootstrap_multilabel_has_per_finding_intervals(multilabel):
    p, y = multilabel
    ci = stats.bootstrap_ci(p, y, list("abcd"), True, resamples=100, seed=0)
    assert "accuracy" not in ci
    for lab in "abcd":
        entry = ci[f"auroc/{lab}"]
        assert entry["lo"] <= entry["value"] <= entry["hi"] and entry["resamples"] == 100


@pytest.mark.parametrize("target", [0.8, 0.95, 1.0])
def test_operating_point_reaches_target_sensitivity_on_fit_data(fixed, target):
    p, y = fixed
    thresholds = stats.fit_operating_point(p, y, LABELS, False, target)
    result = stats.apply_operating_point(p, y, LABELS, False, thresholds)
    for j, lab in enumerate(LABELS):
        assert result[lab]["sensitivity"] >= target
        higher = np.min(p[:, j][p[:, j] > thresholds[lab]], initial=np.inf)  # the next distinct score up
        if np.isfinite(higher):
            assert stats.sens_spec(y == j, p[:, j], higher)["sensitivity"] < target  # the highest such threshold
    one = stats.fit_operating_point(p, y, LABELS, False, target, positive_class="Covid")
    assert list(one) == ["Covid"] and one["Covid"] == thresholds["Covid"]
    with pytest.raises(ValueError, match="not one of the labels"):
        stats.fit_operating_point(p, y, LABELS, False, target, positive_class="Flu")


def _binary_probs(p: np.ndarray) -> np.ndarray:
    return np.stack([1 - p, p], axis=1)


def test_ece_near_zero_when_calibrated_and_large_when_overconfident():
    rng = np.random.default_rng(0)
    p = rng.random(40000)
    y = (rng.random(40000) < p).astype(int)  # labels drawn as Bernoulli(p): calibrated by construction
    calibrated = stats.expected_calibration_error(_binary_probs(p), y, multilabel=False)
    sharp = np.where(p > 0.5, 0.99, 0.01)  # same ranking, claims 99% confidence
    overconfident = stats.expected_calibration_error(_binary_probs(sharp), y, multilabel=False)
    assert calibrated < 0.015
    assert overconfident > 0.2
    multi = stats.expected_calibration_error(p[:, None], y[:, None].astype(float), multilabel=True)
    assert multi < 0.015


def test_ece_agrees_with_torchmetrics(fixed, multilabel):
    p, y = fixed
    ours = stats.expected_calibration_error(p, y, multilabel=False, n_bins=10)
    theirs = multiclass_calibration_error(torch.tensor(p), torch.tensor(y), num_classes=3, n_bins=10, norm="l1")
    assert ours == pytest.approx(float(theirs), abs=1e-4)
    pm, ym = multilabel
    conf, outcome = stats.calibration_pairs(pm, ym, multilabel=True)
    theirs = binary_calibration_error(torch.tensor(conf), torch.tensor(outcome).long(), n_bins=10)
    assert stats.expected_calibration_error(pm, ym, True, 10) == pytest.approx(float(theirs), abs=1e-4)


def test_temperature_scaling_fixes_an_overconfident_predictor():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(5000, 3)) * 1.5
    p_true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in p_true])
    sharp = np.exp(3 * logits) / np.exp(3 * logits).sum(1, keepdims=True)  # logits x3: overconfident
    before = stats.expected_calibration_error(sharp, y, multilabel=False)
    temperature = stats.fit_temperature(sharp, y, multilabel=False)
    after = stats.expected_calibration_error(stats.scale_probs(sharp, temperature, False), y, multilabel=False)
    assert temperature == pytest.approx(3.0, rel=0.15)
    assert after < before / 3
    assert stats.log_loss(stats.scale_probs(sharp, temperature, False), y, False) < stats.log_loss(sharp, y, False)


def test_reliability_bins_count_every_sample():
    conf = np.array([0.0, 0.05, 0.1, 0.55, 1.0])
    bins = stats.reliability_bins(conf, np.array([0, 1, 1, 0, 1.0]), n_bins=10)
    assert bins["count"].sum() == 5 and bins["count"][0] == 3 and bins["count"][-1] == 1
    assert np.isnan(bins["frequency"][3]) and bins["frequency"][0] == pytest.approx(2 / 3)


def test_a_class_the_data_lack_does_not_pull_the_macro_averages_down():
    """A perfect 3-class model on data holding two of the classes: macro recall/F1 1.0, not 2/3; one class only:
    AUROC undefined (NaN), not 0."""
    targets = np.array([0, 0, 1, 1, 1])
    probs = np.eye(3)[targets] * 0.8 + 0.1
    probs /= probs.sum(1, keepdims=True)
    labels = ["A", "B", "C"]
    split, boot = compute_metrics(probs, targets, labels, False), stats.headline(probs, targets, False)
    for numbers in (split, boot):
        assert numbers["recall_macro"] == numbers["f1_macro"] == numbers["precision_macro"] == 1.0
    assert split["per_class"]["C"]["support"] == 0
    one = compute_metrics(probs[:2], targets[:2], labels, False)
    assert np.isnan(one["auroc_macro"]) and np.isnan(one["per_class"]["A"]["auroc"])
    assert macro(np.array([0.5, 0.0]), np.array([3, 0]) > 0) == 0.5
