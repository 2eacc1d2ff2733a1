"""Evaluation figures (matplotlib, Agg): each function returns a Figure; `save_figure` writes it atomically.

Curves come from scikit-learn (`roc_curve`, `precision_recall_curve`); unknown multi-label targets
(NaN) are left out per finding.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve  # noqa: E402

from lungnet.scoring.stats import one_vs_rest  # noqa: E402

log = logging.getLogger(__name__)


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Writes ``fig`` as PNG (temp file + rename), closes it and returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def colours(n: int) -> list:
    """``n`` distinguishable colours (tab10 up to ten, tab20 beyond)."""
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _legend(ax, n_entries: int) -> None:
    if n_entries > 6:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    else:
        ax.legend(loc="lower right", fontsize=8)


# ----------------------------------------------------------------------------- confusion matrix
def confusion_figure(cm: np.ndarray | list, labels: list[str], title: str = "") -> Figure:
    """Counts and row-normalised (per true class: recall on the diagonal) side by side."""
    cm = np.asarray(cm, dtype=np.float64)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    c = len(labels)
    side = max(4.0, 0.6 * c + 2.5)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1.5, side))
    for ax, data, name, fmt in ((axes[0], cm, "counts", "{:.0f}"), (axes[1], norm, "row-normalised", "{:.2f}")):
        im = ax.imshow(data, cmap="Blues", vmin=0, vmax=max(float(data.max()), 1e-9) if name == "counts" else 1.0)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_xticks(range(c), labels, rotation=35, ha="right")
        ax.set_yticks(range(c), labels)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(f"Confusion matrix ({name})")
        high = data.max() / 2 if data.max() > 0 else 0.5
        for i in range(c):
            for j in range(c):
                ax.text(
                    j,
                    i,
                    fmt.format(data[i, j]),
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white" if data[i, j] > high else "black",
                )
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- ROC / PR
def roc_data(probs: np.ndarray, targets: np.ndarray, labels: list[str], multilabel: bool) -> dict:
    """Per-class, micro- and macro-average ROC curves: ``{name: (fpr, tpr, auc)}`` (classes without both
    positives and negatives are skipped)."""
    truth = one_vs_rest(targets, len(labels), multilabel)
    curves: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
    for j, lab in enumerate(labels):
        known = ~np.isnan(truth[:, j])
        y = truth[known, j]
        if y.min(initial=1) == y.max(initial=0):
            continue
        fpr, tpr, _ = roc_curve(y, probs[known, j])
        curves[lab] = (fpr, tpr, float(auc(fpr, tpr)))
    if not curves:
        return curves
    known = ~np.isnan(truth)
    fpr, tpr, _ = roc_curve(truth[known], np.asarray(probs)[known])
    per_class = dict(curves)
    curves["micro-average"] = (fpr, tpr, float(auc(fpr, tpr)))
    grid = np.unique(np.concatenate([c[0] for c in per_class.values()]))
    mean_tpr = np.mean([np.interp(grid, f, t) for f, t, _ in per_class.values()], axis=0)
    curves["macro-average"] = (grid, mean_tpr, float(auc(grid, mean_tpr)))
    return curves


def roc_figure(
    probs: np.ndarray,
    targets: np.ndarray,
    labels: list[str],
    multilabel: bool,
    title: str = "",
    operating_points: dict[str, dict] | None = None,
) -> Figure:
    """One-vs-rest ROC per class (AUC in the legend) plus micro and macro averages.

    Args:
        operating_points: optional ``{label: {"sensitivity", "specificity"}}`` marked on the class curves.
    """
    curves = roc_data(probs, targets, labels, multilabel)
    fig, ax = plt.subplots(figsize=(7.5 if len(labels) > 6 else 6, 5.5))
    cols = dict(zip(labels, colours(len(labels)), strict=True))
    kind = "AUROC" if multilabel else "AUC"
    for name, (fpr, tpr, area) in curves.items():
        if name in cols:
            ax.plot(fpr, tpr, color=cols[name], lw=1.6, label=f"{name} ({kind} {area:.3f})")
        else:
            style = ":" if name == "micro-average" else "--"
            ax.plot(fpr, tpr, color="black", ls=style, lw=1.6, label=f"{name} (AUC {area:.3f})")
    for lab, op in (operating_points or {}).items():
        if lab in curves and np.isfinite(op.get("sensitivity", np.nan)):
            ax.plot(1 - op["specificity"], op["sensitivity"], marker="o", ms=7, mfc="none", color=cols[lab], mew=2)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="-", alpha=0.5)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    what = "per finding" if multilabel else "one-vs-rest per class"
    ax.set_title(title or f"ROC curves, {what}")
    if operating_points:
        ax.plot([], [], marker="o", mfc="none", color="grey", ls="none", label="operating point")
    _legend(ax, len(curves) + bool(operating_points))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def pr_figure(probs: np.ndarray, targets: np.ndarray, labels: list[str], multilabel: bool, title: str = "") -> Figure:
    """Precision-recall curve per class (average precision in the legend) plus the micro average."""
    truth = one_vs_rest(targets, len(labels), multilabel)
    fig, ax = plt.subplots(figsize=(7.5 if len(labels) > 6 else 6, 5.5))
    n = 0
    for j, (lab, col) in enumerate(zip(labels, colours(len(labels)), strict=True)):
        known = ~np.isnan(truth[:, j])
        y = truth[known, j]
        if not y.any():
            continue
        prec, rec, _ = precision_recall_curve(y, probs[known, j])
        ap = average_precision_score(y, probs[known, j])
        ax.plot(rec, prec, color=col, lw=1.6, label=f"{lab} (AP {ap:.3f}, prevalence {y.mean():.2f})")
        n += 1
    known = ~np.isnan(truth)
    if n and truth[known].any():
        prec, rec, _ = precision_recall_curve(truth[known], np.asarray(probs)[known])
        ap = average_precision_score(truth[known], np.asarray(probs)[known])
        ax.plot(rec, prec, color="black", ls=":", lw=1.6, label=f"micro-average (AP {ap:.3f})")
        n += 1
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("recall (sensitivity)")
    ax.set_ylabel("precision (positive predictive value)")
    ax.set_title(title or "Precision-recall curves")
    if n > 6:
        _legend(ax, n)
    else:
        ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- calibration
def reliability_figure(
    before: dict,
    ece_before: float,
    after: dict | None = None,
    ece_after: float | None = None,
    temperature: float | None = None,
    multilabel: bool = False,
) -> Figure:
    """Reliability diagram: observed frequency against confidence per bin, with the bin counts below.

    Args:
        before: `lungnet.scoring.stats.reliability_bins` of the raw probabilities.
        ece_before: their expected calibration error.
        after: the same after temperature scaling (optional).
        ece_after: ECE after temperature scaling.
        temperature: the fitted temperature.
        multilabel: axis wording (probability of the finding vs top-label confidence).
    """
    before = {k: np.asarray(v, dtype=np.float64) for k, v in before.items()}
    after = {k: np.asarray(v, dtype=np.float64) for k, v in after.items()} if after is not None else None
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(6, 6.8), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    edges = before["edges"]
    width = np.diff(edges)
    centres = edges[:-1] + width / 2
    freq = np.nan_to_num(before["frequency"])
    ax.bar(centres, freq, width=width * 0.95, color="tab:blue", alpha=0.6, label=f"before (ECE {ece_before:.3f})")
    full = before["count"] > 0
    gap_lo = np.minimum(freq, before["confidence"])[full]
    gap = np.abs(freq - before["confidence"])[full]
    ax.bar(
        centres[full],
        gap,
        bottom=gap_lo,
        width=width[full] * 0.95,
        fill=False,
        hatch="///",
        edgecolor="tab:red",
        lw=0,
        label="gap to the diagonal",
    )
    if after is not None:
        ok = after["count"] > 0
        ax.plot(
            after["confidence"][ok],
            after["frequency"][ok],
            "o-",
            color="tab:orange",
            lw=1.6,
            label=f"after temperature scaling, T={temperature:.2f} (ECE {ece_after:.3f})",
        )
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("fraction positive" if multilabel else "accuracy")
    ax.set_title("Reliability diagram" + (" before and after temperature scaling" if after is not None else ""))
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    hist.bar(centres, before["count"], width=width * 0.95, color="tab:blue", alpha=0.6, label="before")
    if after is not None:
        hist.stairs(after["count"], edges, color="tab:orange", lw=1.5, label="after")
        hist.legend(fontsize=8)
    hist.set_xlabel("predicted probability of the finding" if multilabel else "confidence (top-class probability)")
    hist.set_ylabel("images" if not multilabel else "labels")
    hist.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- comparison
BAR_METRICS = (
    ("accuracy", "Accuracy"),
    ("precision_macro", "Macro precision"),
    ("recall_macro", "Macro recall (sensitivity)"),
    ("f1_macro", "Macro F1"),
    ("auroc_macro", "Macro AUROC"),
    ("loss", "Loss (cross-entropy)"),
)


def comparison_bars(ci: dict[str, dict[str, dict]], title: str = "") -> Figure:
    """One bar chart per metric, one bar per model, with bootstrap confidence intervals as error bars.

    Args:
        ci: ``{model name: bootstrap_ci(...) result}``; metrics missing for every model are skipped.
        title: figure title (e.g. the data set and split).
    """
    names = list(ci)
    metrics = [(k, t) for k, t in BAR_METRICS if any(np.isfinite(ci[m].get(k, {}).get("value", np.nan)) for m in ci)]
    cols = colours(len(names))
    ncols = 3
    nrows = max(1, -(-len(metrics) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.6 * nrows + 0.4 * max(0, len(names) - 3)))
    axes = np.atleast_1d(axes).ravel()
    for ax, (key, label) in zip(axes, metrics, strict=False):
        vals = np.array([ci[m].get(key, {}).get("value", np.nan) for m in names], dtype=np.float64)
        lo = np.array([ci[m].get(key, {}).get("lo", np.nan) for m in names], dtype=np.float64)
        hi = np.array([ci[m].get(key, {}).get("hi", np.nan) for m in names], dtype=np.float64)
        err = np.nan_to_num(np.vstack([vals - lo, hi - vals]).clip(min=0))
        x = np.arange(len(names))
        ax.bar(x, np.nan_to_num(vals), yerr=err, capsize=4, color=cols, alpha=0.85)
        for xi, v in zip(x, vals, strict=True):
            if np.isfinite(v):
                ax.text(xi, v / 2, f"{v:.3f}", ha="center", va="center", fontsize=8, color="white", fontweight="bold")
        ax.set_xticks(x, names, rotation=30 if len(names) > 2 else 0, ha="right" if len(names) > 2 else "center")
        ax.set_title(label)
        ax.set_ylabel("loss" if key == "loss" else "score")
        if key != "loss":
            ax.set_ylim(0, 1.05)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    fig.suptitle(title or "Model comparison (error bars: 95% bootstrap CI)")
    fig.tight_layout()
    return fig


def roc_overlay_figure(
    runs: dict[str, tuple[np.ndarray, np.ndarray]], labels: list[str], multilabel: bool, title: str = ""
) -> Figure:
    """ROC curves of several models on the same data: one panel per class plus the micro average.

    Args:
        runs: ``{model name: (probs, targets)}``.
        labels: class names shared by all models.
        multilabel: target layout.
        title: figure title.
    """
    panels = [*labels, "micro-average"]
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.4 * nrows + 0.6), squeeze=False)
    axes = axes.ravel()
    cols = colours(len(runs))
    data = {name: roc_data(p, t, labels, multilabel) for name, (p, t) in runs.items()}
    for ax, panel in zip(axes, panels, strict=False):
        for (name, curves), col in zip(data.items(), cols, strict=True):
            if panel in curves:
                fpr, tpr, area = curves[panel]
                ax.plot(fpr, tpr, color=col, lw=1.5, label=f"{name} ({area:.3f})")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, alpha=0.5)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("1 - specificity", fontsize=8)
        ax.set_ylabel("sensitivity", fontsize=8)
        ax.tick_params(labelsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize=7, title="model (AUC)", title_fontsize=7)
        else:
            ax.text(0.5, 0.5, "no positives", ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.grid(alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(title or "ROC curves by model")
    fig.tight_layout()
    return fig


def write_evaluation_figures(run_dir: Path, result: dict, probs, targets, labels: list[str], multilabel: bool) -> dict:
    """All evaluation figures; returns ``{key: file name}``."""
    figures = {}
    title = f"{result['model']} on {result.get('data_name')} ({result['split']}, n={result['n']})"
    if not multilabel:
        fig = confusion_figure(result["confusion_matrix"], labels, title)
        figures["confusion_matrix"] = save_figure(fig, run_dir / "confusion_matrix.png").name
    what = "per finding" if multilabel else "one-vs-rest"
    op = result["operating_point"].get("applied")
    fig = roc_figure(probs, targets, labels, multilabel, f"ROC {what}: {title}", op)
    figures["roc"] = save_figure(fig, run_dir / "roc.png").name
    fig = pr_figure(probs, targets, labels, multilabel, f"Precision-recall {what}: {title}")
    figures["pr"] = save_figure(fig, run_dir / "pr.png").name
    cal = result["calibration"]
    fig = reliability_figure(
        cal["reliability"],
        cal["ece"],
        cal.get("reliability_after"),
        cal.get("ece_after"),
        cal["temperature"],
        multilabel,
    )
    figures["reliability"] = save_figure(fig, run_dir / "reliability.png").name
    return figures
