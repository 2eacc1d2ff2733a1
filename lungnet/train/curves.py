"""Training curves: ``write_training_curves(run_dir)`` turns a run's ``history.csv`` into ``curves.png``.

``history.csv`` is lungnet's own per-epoch record (`lungnet.train.history.EpochHistory`), written whatever the loggers
(``logger=mlflow``, ``wandb``, ``none``...). A run from before it existed is drawn from its CSVLogger file
(``csv/metrics.csv``: one row per logging call with the other columns empty, collapsed to one row per epoch, the
last logged value of each column). Epochs are counted from 0, as everywhere in lungnet. The final numbers of the
best checkpoint on test (or, without a test split, on validation) from the run's ``metrics.json`` go into the
figure title.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from lungnet.scoring.plots import save_figure  # noqa: E402
from lungnet.train.history import HISTORY, read_history  # noqa: E402

log = logging.getLogger(__name__)

LOSS = (("train/loss_epoch", "train"), ("val/loss", "validation"))
SCORES = (
    ("train/acc", "train accuracy", "tab:blue", "-"),
    ("val/acc", "validation accuracy", "tab:orange", "-"),
    ("train/auroc", "train macro AUROC", "tab:blue", "--"),
    ("val/auroc", "validation macro AUROC", "tab:orange", "--"),
    ("val/f1", "validation macro F1", "tab:green", ":"),
)


def epoch_table(csv_path: str | os.PathLike) -> pd.DataFrame:
    """One row per epoch: the last logged value of every metric column in that epoch."""
    frame = pd.read_csv(csv_path)
    if "epoch" not in frame.columns:
        raise ValueError(f"{csv_path} has no 'epoch' column: not a Lightning CSVLogger metrics file")
    frame = frame.dropna(subset=["epoch"])
    frame["epoch"] = frame["epoch"].astype(int)
    return frame.groupby("epoch").last().reset_index()


def final_numbers(metrics_path: Path) -> str:
    """``"Best checkpoint on test: accuracy 0.812, ..."`` from a training run's metrics.json (``Final checkpoint``
    when the run kept its last epoch, ``checkpoint.select=last``)."""
    if not metrics_path.is_file():
        return ""
    metrics = json.loads(metrics_path.read_text())
    split = "test" if isinstance(metrics.get("test"), dict) else "val"
    values = metrics.get(split) or {}
    parts = [
        f"{name} {values[key]:.3f}"
        for key, name in (("accuracy", "accuracy"), ("f1_macro", "macro F1"), ("auroc_macro", "macro AUROC"))
        if isinstance(values.get(key), int | float)
    ]
    where = "test" if split == "test" else "validation (no test split)"
    which = "Final checkpoint (checkpoint.select=last)" if metrics.get("selected") == "last" else "Best checkpoint"
    return f"{which} on {where}: " + ", ".join(parts) if parts else ""


def resized_epochs(table: pd.DataFrame) -> list[int]:
    """The epochs (counted from 0) a `progressive_resize` run trained below its full size (``train/image_size``
    under its largest value); none for a run without the column."""
    if "train/image_size" not in table or table["train/image_size"].isna().all():
        return []
    sizes = table["train/image_size"]
    return [int(e) for e, size in zip(table["epoch"], sizes, strict=True) if size < sizes.max()]


def _shade(axes, epochs: list[int]) -> None:
    """Greys the epochs trained below the full size on every axis, labelled once."""
    for ax in axes:
        for i, epoch in enumerate(epochs):
            label = "trained below full size (progressive_resize)" if i == 0 else None
            ax.axvspan(epoch - 0.5, epoch + 0.5, color="0.85", alpha=0.6, lw=0, zorder=0, label=label)


def run_epochs(run_dir: Path) -> tuple[pd.DataFrame | None, Path]:
    """One row per epoch of a run: its ``history.csv``, else (a run from before it) its ``csv/metrics.csv``."""
    history = run_dir / HISTORY
    legacy = run_dir / "csv" / "metrics.csv"
    if history.is_file() or not legacy.is_file():
        return read_history(history), history
    try:
        return epoch_table(legacy), legacy
    except (OSError, ValueError) as exc:
        log.warning("%s cannot be read as a CSVLogger file (%s)", legacy, exc)
        return None, legacy


def write_training_curves(run_dir: str | os.PathLike) -> Path | None:
    """Writes ``<run_dir>/curves.png``: loss and accuracy (or AUROC) per epoch for train and validation.

    Args:
        run_dir: a training run directory holding ``history.csv`` (and ``metrics.json``).

    Returns:
        The figure's path, or None when the run recorded no epoch.
    """
    run_dir = Path(run_dir)
    table, source = run_epochs(run_dir)
    if table is None or table.empty:
        log.warning("%s holds no finished epoch: no training curves written", source)
        return None
    epochs = table["epoch"]
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(11, 5.2))
    for (col, name), colour in zip(LOSS, ("tab:blue", "tab:orange"), strict=True):
        if col in table and table[col].notna().any():
            ok = table[col].notna()
            ax_loss.plot(epochs[ok], table.loc[ok, col], "o-", color=colour, label=name)
    ax_loss.set_title("Loss")
    ax_loss.set_ylabel("loss")
    scores = [s for s in SCORES if s[0] in table and table[s[0]].notna().any()]
    for col, name, colour, style in scores:
        ok = table[col].notna()
        ax_score.plot(epochs[ok], table.loc[ok, col], marker="o", ls=style, color=colour, label=name)
    has_acc = any(s[0].endswith("/acc") for s in scores)
    ax_score.set_title("Accuracy, AUROC and F1" if has_acc else "AUROC and F1")
    ax_score.set_ylabel("score")
    ax_score.set_ylim(0, 1.02)
    _shade((ax_loss, ax_score), resized_epochs(table))
    for ax in (ax_loss, ax_score):
        ax.set_xlabel("epoch (counted from 0)")
        if len(epochs) <= 20:
            ax.set_xticks(sorted(set(epochs.tolist())))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    summary = final_numbers(run_dir / "metrics.json")
    fig.suptitle(f"Training curves: {run_dir.name}" + (f"\n{summary}" if summary else ""), fontsize=11)
    fig.tight_layout()
    path = save_figure(fig, run_dir / "curves.png")
    log.info("Wrote %s", path)
    return path
