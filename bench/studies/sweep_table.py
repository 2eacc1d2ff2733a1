"""A Hydra sweep (e.g. an Optuna search) as one markdown table: each trial's swept values and validation metrics.

    python -m bench.studies.sweep_table outputs/multirun/<date>/<time> [--out table.json]   # the table: table.md

Reads each job folder's ``.hydra/overrides.yaml`` (the values the sweeper chose; overrides shared by every job are
listed once above the table), ``metrics.json`` (``val`` accuracy and macro AUROC of the selected checkpoint, the
value ``train.py`` returns to the sweeper) and ``train.log`` (first to last time stamp: the job's wall time).
A job without metrics.json (failed, or still running) is listed with its state.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from datetime import datetime
from pathlib import Path

import yaml

from bench.common.cli import main

log = logging.getLogger("sweep_table")
STAMP = re.compile(r"^\[(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}),\d+\]")


def wall_minutes(train_log: Path) -> float | None:
    """Minutes from the first to the last time-stamped line of a job's train.log."""
    if not train_log.is_file():
        return None
    stamps = [m.group(1) for line in train_log.read_text(errors="replace").splitlines() if (m := STAMP.match(line))]
    if len(stamps) < 2:
        return None
    first, last = (datetime.fromisoformat(s) for s in (stamps[0], stamps[-1]))
    return (last - first).total_seconds() / 60


def read_job(job: Path) -> dict:
    """One job folder -> {"num", "overrides": {key: value}, "accuracy", "auroc", "minutes", "state"}."""
    overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
    row = {"num": int(job.name.split("_")[0]), "overrides": dict(o.split("=", 1) for o in overrides)}
    metrics = job / "metrics.json"
    if metrics.is_file():
        val = json.loads(metrics.read_text()).get("val", {})
        row.update(accuracy=val.get("accuracy"), auroc=val.get("auroc_macro"), state="done")
    else:
        row.update(accuracy=None, auroc=None, state="no metrics.json")
    row["minutes"] = wall_minutes(job / "train.log")
    return row


def fmt(value: str) -> str:
    """Numbers to 4 significant digits, anything else as written."""
    try:
        return f"{float(value):.4g}" if any(c in value for c in ".e") else value
    except ValueError:
        return value


def table(rows: list[dict]) -> str:
    """Markdown: shared overrides, then one row per job (swept keys, val accuracy, val AUROC, minutes)."""
    keys = list(dict.fromkeys(k for r in rows for k in r["overrides"]))
    shared = [k for k in keys if len({r["overrides"].get(k) for r in rows}) == 1]
    swept = [k for k in keys if k not in shared]
    common = " ".join(f"{k}={rows[0]['overrides'][k]}" for k in shared)
    lines = [f"Shared by every job: `{common}`", ""]
    lines.append("| job | " + " | ".join(swept) + " | val accuracy | val AUROC | minutes |")
    lines.append("|" + "---|" * (len(swept) + 4))
    best = max((r for r in rows if r["auroc"] is not None), key=lambda r: r["auroc"], default=None)
    for r in sorted(rows, key=lambda r: r["num"]):
        vals = [fmt(r["overrides"].get(k, "")) for k in swept]
        acc = f"{r['accuracy']:.4f}" if r["accuracy"] is not None else r["state"]
        auc = f"{r['auroc']:.4f}" if r["auroc"] is not None else ""
        if r is best:
            auc = f"**{auc}**"
        mins = f"{r['minutes']:.1f}" if r["minutes"] is not None else ""
        lines.append(f"| {r['num']} | " + " | ".join(vals) + f" | {acc} | {auc} | {mins} |")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The sweep directory."""
    parser.add_argument("sweep", type=Path, help="the sweep directory (hydra.sweep.dir)")


def run(args: argparse.Namespace) -> dict:
    """The sweep's table, logged and written beside ``--out`` as .md; the record holds the jobs."""
    jobs = [p for p in args.sweep.iterdir() if (p / ".hydra" / "overrides.yaml").is_file()]
    if not jobs:
        raise SystemExit(f"{args.sweep}: no job folders (with .hydra/overrides.yaml) found; pass a sweep directory")
    rows = [read_job(j) for j in jobs]
    text = table(rows)
    results = args.sweep / "optimization_results.yaml"
    if results.is_file():
        text += "\n`optimization_results.yaml`:\n\n```yaml\n" + results.read_text() + "```\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    log.info("%s", text)
    return {"sweep": str(args.sweep), "jobs": rows}


if __name__ == "__main__":
    main("sweep_table", __doc__, add_arguments, run)
