"""The leave-one-source-out table written out: ``loso.json``, ``loso.csv`` and ``loso.md``."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from lungnet.evaluation.report import fmt, fmt_ci, table
from lungnet.evaluation.transfer_report import public
from lungnet.io import write_csv, write_json, write_text

log = logging.getLogger(__name__)

HEADER = [
    "held-out set",
    "images (split)",
    "findings",
    "left out of training (LOSO)",
    "trained on it alone",
    "trained on all",
    "LOSO - alone [95% CI]",
    "LOSO - all [95% CI]",
]


def _auroc(c: dict | None) -> dict | None:
    return c["auroc"] if c is not None and c.get("status") == "ok" else None


def _diff_text(d: dict | None) -> str:
    return "-" if d is None else f"{fmt(d['diff'])} [{fmt(d['lo'])}, {fmt(d['hi'])}]"


def _cell_text(c: dict | None) -> str:
    if c is None:
        return "-"
    return fmt_ci(c["auroc"]) if c["status"] == "ok" else c["status"]


def csv_rows(results: list[dict]) -> pd.DataFrame:
    """One row per held-out set: each model's AUROC with its interval, and the paired differences."""
    rows = []
    for r in results:
        row = {"held_out": r["held_out"], "split": r["split"], "n": r["n_column"], "dropped_copies": r["dropped"]}
        row["findings"] = "|".join(r["findings"])
        for role in ("loso", "single", "pooled"):
            a = _auroc(r["cells"].get(role))
            row[f"{role}_model"] = r["models"][role] or ""
            for key in ("value", "lo", "hi"):
                row[f"{role}_auroc" + ("" if key == "value" else f"_{key}")] = a[key] if a else float("nan")
        for name, d in (r.get("diffs") or {}).items():
            for key in ("diff", "lo", "hi"):
                row[name + ("" if key == "diff" else f"_{key}")] = d[key] if d else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def loso_markdown(results: list[dict], opts: dict) -> str:
    """loso.md: the table, then how the images were chosen and scored."""
    lines = []
    for r in results:
        cells, diffs = r["cells"], r.get("diffs") or {}
        n = r["n_column"] if not cells or cells["single"].get("status") != "ok" else cells["single"]["n"]
        lines.append(
            [
                r["held_out"],
                f"{n} ({r['split']}; {r['dropped']} copies left out)",
                " vs ".join(r["findings"]) or r["status"],
                *[_cell_text(cells.get(role)) for role in ("loso", "single", "pooled")],
                _diff_text(diffs.get("loso_minus_single")),
                _diff_text(diffs.get("loso_minus_pooled")),
            ]
        )
    units = {d["unit"] for r in results for d in (r.get("diffs") or {}).values() if d}
    unit = " and ".join(sorted(f"{u}s" for u in units)) or "images"
    models = table(
        ["held-out set", "LOSO model", "single-source model", "all-sources model"],
        [[r["held_out"], *[r["models"][role] or "-" for role in ("loso", "single", "pooled")]] for r in results],
    )
    near = f"exact and near (dHash within {opts['near_threshold']} bits)" if opts["near_threshold"] else "exact"
    return (
        "# Leave one source out\n\nlungnet is a research tool, not a medical device.\n\n"
        "Each row: a data set, scored on its held-out images by the model trained on every other set (LOSO), the "
        "model trained on it alone (in-distribution reference) and the model trained on all the sets. All three "
        "are scored on the same images, through the findings all three share with the set (AUROC: macro "
        "one-vs-rest; for two findings the AUROC of either; a multi-label model's sigmoid outputs restricted to "
        "those findings and renormalised), with 95% bootstrap intervals.\n\n"
        f"{table(HEADER, lines)}\n\n"
        f"Images: the set's {opts['split']} split as its single-source run split it (auto: test when it has one, "
        "else val, which chose that model's checkpoint: its column is optimistic for the single-source model); "
        f"{near} copies of the other models' training images handled by overlap={opts['overlap']} (drop: left "
        "out for every model; copies of their validation images stay, counted as seen). Differences are paired "
        f"(same images), resampling {unit}.\n\n"
        f"## Models\n\n{models}\n"
    )


def write_loso(run_dir: Path, models: list, results: list[dict], opts: dict) -> dict:
    """Writes loso.json, loso.csv and loso.md; returns the JSON content."""
    out = {
        "models": [
            {"name": m.row.name, "checkpoint": str(m.row.loaded.path), "sources": list(m.sources)} for m in models
        ],
        "rows": [{**r, "cells": {k: public(c) for k, c in r["cells"].items()}} for r in results],
        "settings": {k: v for k, v in opts.items() if k != "device"},
    }
    write_json(run_dir / "loso.json", out)
    write_csv(run_dir / "loso.csv", csv_rows(results))
    write_text(run_dir / "loso.md", loso_markdown(results, opts))
    log.info("Wrote loso.md, loso.csv and loso.json to %s", run_dir)
    return out
