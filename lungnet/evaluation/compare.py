"""Compare several checkpoints on the same images: one command, one table, bar charts and overlaid ROC curves.

Usage::

    python compare.py runs=outputs/multirun/2026-11-24/10-00-00            # every */checkpoints/best.ckpt below
    python compare.py runs=[outputs/a/checkpoints/best.ckpt,outputs/b] split=val
    python compare.py runs=outputs/multirun/<date>/<time> split=test bootstrap.resamples=2000

``runs`` is a directory (searched for finished training runs: ``checkpoints/best.ckpt`` and ``metrics.json``; an
unfinished one is skipped with a warning naming it), a checkpoint, or a list of them
(``[a,b]`` or the quoted string ``'a,b'``). Every other option is an ``evaluate.py`` option (split,
data.root, operating_point.*, bootstrap.*, calibration.*). The run directory
(``outputs/compare/<date>/<time>/``) receives:

- ``<model>/``: the full evaluation of each checkpoint (metrics.json, figures, report.md, ...);
- ``comparison.csv`` and ``comparison.md``: one row per model, metrics with 95% bootstrap CIs;
- ``comparison_bars.png``: accuracy, macro precision, recall, F1, AUROC and loss per model (CI error bars);
- ``comparison_roc.png``: ROC curves of all models overlaid, one panel per class plus the micro average.

Checkpoints with different label lists are refused, and so are checkpoints that hold different images in the
compared split (another ``data.split_seed``, fraction or data set: told from the split fingerprints they record,
`lungnet.evaluation.same_split`), before any model runs, unless ``allow_different_images=true``; the images each
evaluation saw are compared again afterwards. A seed sweep (``train.py -m seed=1,2``) shares its split.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, ListConfig, OmegaConf

from lungnet.artifacts.checkpoint import checkpoints_below, model_names, no_run_message, read_checkpoint
from lungnet.config_checks import pin_paths
from lungnet.data.sources import DataError
from lungnet.evaluation.bootstrap_unit import phrase
from lungnet.evaluation.pipeline import evaluate_with_predictions
from lungnet.evaluation.report import fmt, fmt_ci, markdown_to_html, table
from lungnet.evaluation.same_split import SplitFacts, check_same_split
from lungnet.io import write_csv, write_text
from lungnet.scoring import plots
from lungnet.scoring.plots import BAR_METRICS

log = logging.getLogger(__name__)


def find_checkpoints(runs: str | list | ListConfig) -> list[Path]:
    """Checkpoint paths from ``runs``: checkpoint files, run directories or multirun directories.

    A directory gives the checkpoint of each finished training run in it; unfinished runs (no ``metrics.json``)
    are skipped and named in a warning (`lungnet.artifacts.checkpoint.training_runs`).

    Raises:
        FileNotFoundError: an entry that does not exist, or a directory without a finished training run.
    """
    entries = [str(r) for r in runs] if isinstance(runs, list | ListConfig) else str(runs).split(",")
    found: list[Path] = []
    for entry in (e.strip() for e in entries if e.strip()):
        path = Path(entry).expanduser()
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            below, unfinished = checkpoints_below(path)
            if not below:
                raise FileNotFoundError(f"runs={no_run_message(path, unfinished)}")
            found += below
        else:
            raise FileNotFoundError(f"runs: {path} is neither a checkpoint nor a directory")
    if len(found) < 1:
        raise FileNotFoundError(f"runs={runs!r} names no checkpoint")
    return found


def check_same_labels(ckpts: list[Path], names: list[str] | None = None) -> tuple[list[str], list[SplitFacts]]:
    """The shared label list, and what each checkpoint records about its splits; refuses checkpoints whose labels (or
    multi-label flag) differ.

    Args:
        ckpts: the checkpoints.
        names: their names in messages (default: `model_names`).

    Raises:
        DataError: naming each checkpoint and its labels.
    """
    seen, facts = {}, []
    for ckpt, name in zip(ckpts, names or model_names(ckpts), strict=True):
        hp = read_checkpoint(ckpt)["hyper_parameters"]
        seen[str(ckpt)] = (list(hp["labels"]), bool(hp["multilabel"]))
        facts.append(SplitFacts.of(name, hp))
    if len(set(map(repr, seen.values()))) > 1:
        listing = "; ".join(f"{k}: {v[0]}{' (multi-label)' if v[1] else ''}" for k, v in seen.items())
        raise DataError(f"Cannot compare checkpoints with different label lists: {listing}")
    return next(iter(seen.values()))[0], facts


def check_same_images(cfg: DictConfig, facts: list[SplitFacts]) -> None:
    """Refuses, before any model runs, checkpoints whose recorded ``cfg.split`` differs (`check_same_split`), unless
    ``allow_different_images``; ``split=all`` and another data set (``data=<B>``) score the same images anyway.

    Raises:
        DataError: one line naming two runs, the split and why (e.g. ``split_seed 1 vs 2``).
    """
    chosen = OmegaConf.select(cfg, "data.name", default=None)
    if cfg.get("allow_different_images", False) or any(chosen and f.data.get("name") != chosen for f in facts):
        return
    remedy = "train them with the same data.split_seed and split settings, or set allow_different_images=true"
    check_same_split(facts, [str(cfg.split)], "runs", remedy)


def comparison_table(results: dict[str, dict]) -> pd.DataFrame:
    """One row per model: metric values with CI bounds, ECE and the operating point's mean sensitivity/specificity."""
    rows = []
    for name, res in results.items():
        ci = res["confidence_intervals"]
        row = {"model": name, "architecture": res["model"], "checkpoint": res["checkpoint"], "n": res["n"]}
        for key, _ in BAR_METRICS:
            if key in ci:
                row.update({key: ci[key]["value"], f"{key}_lo": ci[key]["lo"], f"{key}_hi": ci[key]["hi"]})
        row["ece"] = res["calibration"]["ece"]
        row["ece_after_temperature"] = res["calibration"].get("ece_after")
        applied = res["operating_point"].get("applied", {}).values()
        row["op_sensitivity_mean"] = float(np.nanmean([a["sensitivity"] for a in applied])) if applied else None
        row["op_specificity_mean"] = float(np.nanmean([a["specificity"] for a in applied])) if applied else None
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_markdown(frame: pd.DataFrame, results: dict[str, dict], figures: list[str]) -> str:
    """The comparison as markdown: context, the table (best value per column in bold), the figures."""
    first = next(iter(results.values()))
    keys = [(k, t) for k, t in BAR_METRICS if k in frame]
    header = ["model", "architecture", "n", *[t for _, t in keys], "ECE", "op. sensitivity / specificity (mean)"]
    best = {k: (frame[k].min() if k == "loss" else frame[k].max()) for k, _ in keys}
    rows = []
    for _, r in frame.iterrows():
        cells = []
        for k, _ in keys:
            cell = fmt_ci({"value": r[k], "lo": r[f"{k}_lo"], "hi": r[f"{k}_hi"]})
            cells.append(f"**{cell}**" if np.isfinite(r[k]) and r[k] == best[k] and len(frame) > 1 else cell)
        op = f"{fmt(r['op_sensitivity_mean'])} / {fmt(r['op_specificity_mean'])}"
        rows.append([r["model"], r["architecture"], str(r["n"]), *cells, fmt(r["ece"]), op])
    op = first["operating_point"]
    text = [
        f"# Model comparison: {first.get('data_name')} ({first['split']} split, n = {first['n']})",
        "lungnet is a research tool, not a medical device.",
        f"Every model was evaluated on the same {first['n']} images. Values: estimate [95% percentile bootstrap "
        f"CI {phrase(first['bootstrap'])}, {first['bootstrap']['resamples']} resamples]; best per column in bold. "
        f"Operating point: target sensitivity {fmt(op['target_sensitivity'], 2)}, thresholds fitted on "
        f"{op['fit_split']}. Each model's full report is in its own folder.",
        table(header, rows),
        *[f"![{f}]({f})" for f in figures],
        "## Checkpoints\n\n"
        + "\n".join(f"- {n}: `{r['checkpoint']}` ([report]({n}/report.md))" for n, r in results.items()),
    ]
    return "\n\n".join(text) + "\n"


def compare(cfg: DictConfig, run_dir: str | Path) -> pd.DataFrame:
    """Evaluates every checkpoint of ``cfg.runs`` on ``cfg.split`` and writes the comparison (see module doc).

    Args:
        cfg: the composed ``compare`` config (``runs`` plus every ``evaluate`` option).
        run_dir: output directory.

    Returns:
        The comparison table.
    """
    run_dir = Path(run_dir)
    pin_paths(cfg, run_dir)  # paths.output_dir names this comparison's directory, also outside a Hydra app
    ckpts = find_checkpoints(cfg.runs)
    names = model_names(ckpts)
    labels, facts = check_same_labels(ckpts, names)
    check_same_images(cfg, facts)  # before any model runs
    log.info("Comparing %d checkpoints on %s: %s", len(ckpts), cfg.split, ", ".join(names))
    base = OmegaConf.to_container(cfg, resolve=True)
    base.pop("runs", None)
    results, arrays, images = {}, {}, {}
    multilabel = False
    for name, ckpt in zip(names, ckpts, strict=True):
        sub = OmegaConf.create({**base, "ckpt": str(ckpt)})
        result, probs, targets, paths = evaluate_with_predictions(sub, run_dir / name)
        results[name], arrays[name], images[name] = result, (probs, targets), sorted(paths)
        multilabel = result["multilabel"]
    reference = next(iter(images.values()))
    differ = [n for n, p in images.items() if p != reference]
    if differ and not cfg.get("allow_different_images", False):
        raise DataError(
            f"Models {differ} were evaluated on other images than {names[0]} (different data root, "
            "data.split_seed or fractions?): a comparison would not be fair. Set allow_different_images=true to "
            "override."
        )
    frame = comparison_table(results)
    write_csv(run_dir / "comparison.csv", frame)
    first = next(iter(results.values()))
    title = f"{first.get('data_name')} ({cfg.split} split, n = {first['n']})"
    ci = {n: r["confidence_intervals"] for n, r in results.items()}
    plots.save_figure(
        plots.comparison_bars(ci, f"Model comparison on {title}; error bars: 95% bootstrap CI"),
        run_dir / "comparison_bars.png",
    )
    plots.save_figure(
        plots.roc_overlay_figure(arrays, labels, multilabel, f"ROC curves by model on {title}"),
        run_dir / "comparison_roc.png",
    )
    md = comparison_markdown(frame, results, ["comparison_bars.png", "comparison_roc.png"])
    write_text(run_dir / "comparison.md", md)
    if OmegaConf.select(cfg, "report.html", default=True):
        write_text(run_dir / "comparison.html", markdown_to_html(md, run_dir, "lungnet model comparison"))
    log.info("Wrote comparison.csv, comparison.md and charts to %s", run_dir)
    return frame
