"""Every evaluation figure renders to a valid, non-trivial PNG (single- and multi-label)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lungnet.scoring import plots, stats

LABELS = ["Normal", "Pneumonia", "Covid"]


def assert_png(path: Path, min_side: int = 300) -> None:
    """``path`` is a PNG that PIL decodes, at least ``min_side`` pixels each way and not one flat colour."""
    assert path.is_file(), path
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.load()
        assert min(img.size) >= min_side, img.size
        lo, hi = img.convert("L").getextrema()
        assert hi - lo > 50


@pytest.fixture
def preds():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 120)
    logits = rng.normal(size=(120, 3)) + 2 * np.eye(3)[y]
    return np.exp(logits) / np.exp(logits).sum(1, keepdims=True), y


def test_single_label_figures(preds, tmp_path):
    p, y = preds
    cm = np.bincount(y * 3 + p.argmax(1), minlength=9).reshape(3, 3)
    ops = stats.apply_operating_point(p, y, LABELS, False, stats.fit_operating_point(p, y, LABELS, False, 0.9))
    figs = {
        "cm": plots.confusion_figure(cm, LABELS, "test"),
        "roc": plots.roc_figure(p, y, LABELS, False, operating_points=ops),
        "pr": plots.pr_figure(p, y, LABELS, False),
    }
    bins = stats.reliability_bins(*stats.calibration_pairs(p, y, False), 10)
    after = stats.reliability_bins(*stats.calibration_pairs(stats.scale_probs(p, 1.5, False), y, False), 10)
    figs["rel"] = plots.reliability_figure(bins, 0.1, after, 0.05, 1.5)
    for name, fig in figs.items():
        assert_png(plots.save_figure(fig, tmp_path / f"{name}.png"))


def test_roc_curves_have_the_sklearn_areas(preds):
    p, y = preds
    curves = plots.roc_data(p, y, LABELS, False)
    assert set(curves) == {*LABELS, "micro-average", "macro-average"}
    for j, lab in enumerate(LABELS):
        assert curves[lab][2] == pytest.approx(stats.binary_auroc(y == j, p[:, j]))


def test_multilabel_figures_with_unknowns_and_an_absent_finding(tmp_path):
    rng = np.random.default_rng(1)
    labels = [f"finding {i}" for i in range(8)]  # > 6: legend outside the axes
    y = (rng.random((200, 8)) < 0.2).astype(float)
    y[:, 5] = 0  # no positives: no curve, no crash
    y[rng.random((200, 8)) < 0.05] = np.nan
    p = np.clip(0.4 * np.nan_to_num(y) + 0.6 * rng.random((200, 8)), 0, 1)
    curves = plots.roc_data(p, y, labels, True)
    assert "finding 5" not in curves and "finding 0" in curves
    assert_png(plots.save_figure(plots.roc_figure(p, y, labels, True), tmp_path / "roc.png"))
    assert_png(plots.save_figure(plots.pr_figure(p, y, labels, True), tmp_path / "pr.png"))
    bins = stats.reliability_bins(*stats.calibration_pairs(p, y, True), 15)
    assert_png(plots.save_figure(plots.reliability_figure(bins, 0.2, multilabel=True), tmp_path / "rel.png"))
    overlay = plots.roc_overlay_figure({"a": (p, y), "b": (p[:, ::-1].copy(), y)}, labels, True)
    assert_png(plots.save_figure(overlay, tmp_path / "overlay.png"))


def test_comparison_bars(preds, tmp_path):
    p, y = preds
    ci = {
        "resnet18": stats.bootstrap_ci(p, y, LABELS, False, 50, 0),
        "simple_cnn": stats.bootstrap_ci(p[::-1], y, LABELS, False, 50, 0),
    }
    assert_png(plots.save_figure(plots.comparison_bars(ci), tmp_path / "bars.png"))
