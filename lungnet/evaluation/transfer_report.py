"""The generalisation matrix written out: ``transfer.json``, ``transfer.md`` and the heat map ``transfer.png``."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from lungnet.evaluation.report import fmt, fmt_ci, table
from lungnet.io import write_json, write_text
from lungnet.scoring import plots

log = logging.getLogger(__name__)


def public(c: dict) -> dict:
    """A cell without its arrays."""
    return {k: v for k, v in c.items() if not k.startswith("_")}


def cell_text(c: dict) -> str:
    """``0.951 [0.93, 0.97] n=524`` (plus what was left out), or the reason the cell is empty."""
    if c["status"] != "ok":
        return c["status"]
    extra = []
    if c.get("left_out"):
        extra.append("left out " + ", ".join(f"{k} {v}" for k, v in c["left_out"].items()))
    if c.get("n_seen"):
        extra.append(f"{c['n_seen']} seen in training {'dropped' if c.get('policy') != 'allow' else 'kept'}")
    note = f" ({'; '.join(extra)})" if extra else ""
    return f"{fmt_ci(c['auroc'])} n={c['n']}{note}"


def cell_label(c: dict) -> str:
    """The text of one heat-map cell: AUROC, CI and n (and the copies dropped), or why it is empty."""
    kept = "kept" if c.get("policy") == "allow" else "dropped"
    seen = f"{c['n_seen']} seen in training {kept}" if c.get("n_seen") else ""
    if c["status"] != "ok":
        return "\n".join(p for p in (c["status"].replace(": ", ":\n"), seen) if p)
    a = c["auroc"]
    return "\n".join(p for p in (f"{a['value']:.3f}", f"[{a['lo']:.2f}, {a['hi']:.2f}]", f"n={c['n']}", seen) if p)


def heatmap(column_labels: list[str], row_names: list[str], cells: list[list[dict]]) -> object:
    """Rows = trained on, columns = evaluated on; colour = AUROC; text = AUROC, CI and n; own data set dashed.

    Takes plain labels and the cells as in transfer.json, so a matrix can be drawn again from its JSON.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    values = np.array([[c["auroc"]["value"] if c["status"] == "ok" else np.nan for c in line] for line in cells])
    fig, ax = plt.subplots(figsize=(3.2 * len(column_labels) + 3.0, 1.6 * len(row_names) + 1.8))
    cmap = plt.get_cmap("RdYlGn").copy()
    cmap.set_bad("#dddddd")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.3, vmax=1.0, aspect="auto")
    for r, line in enumerate(cells):
        for j, c in enumerate(line):
            value = values[r, j]
            rgb = cmap(image.norm(value))[:3] if np.isfinite(value) else (0.87, 0.87, 0.87)
            dark = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] < 0.5  # white text on dark cells
            ax.text(j, r, cell_label(c), ha="center", va="center", fontsize=10, color="white" if dark else "black")
            if c["internal"]:
                ax.add_patch(Rectangle((j - 0.45, r - 0.45), 0.9, 0.9, fill=False, ec="black", lw=2, ls="--"))
    ax.set_xticks(range(len(column_labels)), column_labels, fontsize=10)
    ax.set_yticks(range(len(row_names)), [n.replace(" / ", "\n") for n in row_names], fontsize=10)
    ax.set_xlabel("evaluated on", fontsize=11)
    ax.set_ylabel("trained on", fontsize=11)
    scored = {tuple(c["scored"]) for line in cells for c in line if c["status"] == "ok"}
    what = " vs ".join(next(iter(scored))) if len(scored) == 1 else "the shared findings"
    ax.set_title(f"AUROC [95% CI] on {what}; dashed: the model's own data set", fontsize=12)
    fig.colorbar(image, ax=ax, label="AUROC (0.5: chance)")
    fig.tight_layout()
    return fig


def transfer_markdown(rows, columns, cells, drops: list[dict], opts: dict, figure: str) -> str:
    """transfer.md: the matrix, the drops with their intervals, how cells were scored."""
    header = ["trained on \\ evaluated on", *[f"{c.name} ({c.split})" for c in columns]]
    matrix = table(header, [[r.name, *[cell_text(c) for c in line]] for r, line in zip(rows, cells, strict=True)])
    drop_rows = [
        [
            d["row"],
            d["column"],
            " vs ".join(d["scored"]),
            f"{fmt(d['internal'])} (n={d['n_internal']})",
            fmt(d["external"]),
            f"{fmt(d['drop'])} [{fmt(d['lo'])}, {fmt(d['hi'])}]",
        ]
        for d in drops
    ]
    drop_table = (
        table(
            ["trained on", "evaluated on", "findings", "internal AUROC", "external AUROC", "drop [95% CI]"], drop_rows
        )
        if drops
        else "No external cell with numbers."
    )
    findings = ", ".join(opts["findings"]) if opts["findings"] else "the findings each model shares with each set"
    near = f"exact and near (dHash within {opts['near_threshold']} bits)" if opts["near_threshold"] else "exact"
    return (
        "# Generalisation matrix\n\nlungnet is a research tool, not a medical device.\n\n"
        f"AUROC (macro one-vs-rest; for two findings the AUROC of either) with 95% bootstrap intervals (over patients "
        f"where the data name them, each with every image; over images elsewhere: `bootstrap` of each cell in "
        f"transfer.json), scored on "
        f"{findings}. Columns: each run's own data set on its evaluation split (split={opts['split']}; auto: its test "
        f"split when it has one, else val: a val split chose the checkpoint, so its internal AUROC is optimistic "
        f"and the drop overstated), internal for that run (dashed in the figure); other data sets on all "
        f"their images. Images whose label the model does not know are left out; {near} copies of a "
        f"model's training or validation images are handled by overlap={opts['overlap']}.\n\n"
        f"{matrix}\n\n![Generalisation matrix]({figure})\n\n"
        "## Drop from internal to external\n\nThe model's AUROC on its own data set (same findings) minus its AUROC "
        "on the other; the interval resamples both sets independently (patients where named, else images).\n\n"
        f"{drop_table}\n"
    )


def write_transfer(run_dir: Path, rows, columns, cells, drops: list[dict], opts: dict) -> dict:
    """Writes transfer.json, transfer.md and transfer.png; returns the JSON content."""
    for line in cells:
        for c in line:
            c["policy"] = opts["overlap"]
    labels = [f"{c.name}\n({c.split}, {len(c.table)} images)" for c in columns]
    figure = plots.save_figure(heatmap(labels, [r.name for r in rows], cells), run_dir / "transfer.png").name
    out = {
        "rows": [{"name": r.name, "checkpoint": str(r.loaded.path), "data": r.data_name} for r in rows],
        "columns": [
            {"name": c.name, "source": c.source, "split": c.split, "n": len(c.table), "owner": c.owner} for c in columns
        ],
        "cells": [[public(c) for c in line] for line in cells],
        "drops": drops,
        "settings": {k: v for k, v in opts.items() if k != "device"},
    }
    write_json(run_dir / "transfer.json", out)
    write_text(run_dir / "transfer.md", transfer_markdown(rows, columns, cells, drops, opts, figure))
    log.info("Wrote transfer.md, transfer.json and transfer.png to %s", run_dir)
    return out
