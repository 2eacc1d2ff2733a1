"""Cross-validation summary: per-fold metrics, their mean and spread, and pooled out-of-fold metrics with CIs.

Usage, after a k-fold multirun (each fold is one run directory)::

    python train.py -m experiment=darkcovidnet_best data.cv_folds=5 data.cv_fold=0,1,2,3,4 checkpoint.select=last
    python -m lungnet.evaluation.crossval runs=outputs/multirun/<date>/<time> [resamples=1000] [out=<dir>]

Each fold's validation predictions (``predictions_val.csv``, written by train.py) are pooled into one
out-of-fold prediction per image. The summary refuses folds that do not belong together: different fold
counts, seeds, label lists or datasets, a fold seen twice, or validation images shared between folds.
With ``checkpoint.select=best`` each fold's epoch was chosen on the same images it is scored on, which
flatters the numbers; the summary says which was used. Written to ``out`` (default: the multirun
directory): ``cv_summary.md``, ``cv_summary.json``, ``cv_folds.csv`` and ``oof_predictions.csv``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from lungnet.data.sources import DataError
from lungnet.evaluation.report import fmt, fmt_ci, table
from lungnet.evaluation.stats import bootstrap_ci
from lungnet.io import write_csv, write_json, write_text

log = logging.getLogger(__name__)

DEFAULTS = {"runs": None, "resamples": 1000, "seed": 0, "out": None}
FOLD_METRICS = ("accuracy", "auroc_macro", "f1_macro", "recall_macro", "precision_macro")


def find_fold_runs(root: str | Path) -> list[Path]:
    """Run directories under ``root`` holding a finished fold (config.yaml, metrics.json, predictions_val.csv).

    Raises:
        FileNotFoundError: ``root`` is missing or holds no finished run.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"Not a directory: {root}")
    runs = sorted(p.parent for p in root.rglob("metrics.json") if (p.parent / "predictions_val.csv").is_file())
    if not runs:
        raise FileNotFoundError(f"No finished runs (metrics.json + predictions_val.csv) under {root}")
    return runs


# settings that may differ between the folds of one cross-validation (where and how fast, not what is trained)
FREE_KEYS = (
    "data.cv_fold",
    "data.root",
    "data.num_workers",
    "data.persistent_workers",
    "data.pin_memory",
    "data.cache",
    "data.cache_dir",
    "data.verify",
    "paths.",
    "resume",
    "log_figures_every",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "trainer.devices",
    "trainer.accelerator",
)


def _settings(cfg) -> dict:
    """The resolved config as ``{"dotted.key": value}``, without the keys folds may differ in."""
    flat = pd.json_normalize(OmegaConf.to_container(cfg, resolve=False), sep=".").iloc[0].to_dict()
    return {k: json.dumps(v, sort_keys=True, default=str) for k, v in flat.items() if not k.startswith(FREE_KEYS)}


def load_fold(run: Path) -> dict:
    """One fold's config facts, validation metrics and predictions.

    Raises:
        DataError: an unreadable or incomplete run directory (named in the message).
    """
    try:
        cfg = OmegaConf.load(run / "config.yaml")
        metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
        metrics["val"]["n"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{run} is not a finished fold (config.yaml / metrics.json with val metrics): {exc}") from exc
    return {
        "run": run,
        "fold": int(cfg.data.get("cv_fold", 0)),
        "folds": int(cfg.data.get("cv_folds", 0)),
        "seed": int(cfg.seed),
        "data": str(cfg.data.name),
        "model": str(cfg.model.name),
        "settings": _settings(cfg),
        "select": str(metrics.get("selected", "best")),
        "val": metrics["val"],
        "predictions": pd.read_csv(run / "predictions_val.csv"),
    }


def check_folds(folds: list[dict]) -> None:
    """Raises DataError unless the runs are the k distinct folds of one k-fold split."""
    for key in ("folds", "seed", "data", "model"):
        values = sorted({str(f[key]) for f in folds})
        if len(values) > 1:
            raise DataError(f"The runs differ in {key}: {values}; summarise one cross-validation at a time")
    shared = set.intersection(*(set(f["settings"]) for f in folds))  # keys added later count only where present
    differ = {key: sorted({f["settings"][key] for f in folds}) for key in sorted(shared)}
    differ = {key: values for key, values in differ.items() if len(values) > 1}
    if differ:
        raise DataError(
            f"The folds were trained with different settings {differ}; summarise one recipe's folds at a time"
        )
    k = folds[0]["folds"]
    if k < 2:
        raise DataError(f"{folds[0]['run']} is not a cross-validation fold (data.cv_folds={k})")
    seen = [f["fold"] for f in folds]
    if len(set(seen)) != len(seen):
        raise DataError(f"A fold appears twice: {sorted(seen)} (one run directory per fold)")
    columns = {tuple(f["predictions"].columns) for f in folds}
    if len(columns) > 1:
        raise DataError("The folds' predictions have different label columns")
    paths = pd.concat([f["predictions"]["path"] for f in folds])
    if paths.duplicated().any():
        raise DataError(f"{int(paths.duplicated().sum())} validation images appear in more than one fold")


def summarise(runs: list[Path], resamples: int = 1000, seed: int = 0) -> dict:
    """Per-fold table, mean and standard deviation, and pooled out-of-fold metrics with bootstrap CIs."""
    folds = sorted((load_fold(r) for r in runs), key=lambda f: f["fold"])
    check_folds(folds)
    k = folds[0]["folds"]
    missing = sorted(set(range(k)) - {f["fold"] for f in folds})
    if missing:
        log.warning("Folds %s of %d are missing: the summary covers %d folds only", missing, k, len(folds))
    per_fold = pd.DataFrame(
        [{"fold": f["fold"], "n": f["val"]["n"], **{m: f["val"].get(m) for m in FOLD_METRICS}} for f in folds]
    )
    oof = pd.concat([f["predictions"].assign(fold=f["fold"]) for f in folds], ignore_index=True)
    labels = [c[2:] for c in oof.columns if c.startswith("p_")]
    probs = oof[[f"p_{lab}" for lab in labels]].to_numpy(dtype=np.float64)
    multilabel = "accuracy" not in folds[0]["val"]  # multi-label runs report AUROC/F1 per finding, no accuracy
    if multilabel:  # "A|B" -> one 0/1 column per finding
        truth = oof["true"].fillna("").astype(str).str.split("|")
        targets = np.array([[float(lab in t) for lab in labels] for t in truth])
    else:
        targets = oof["true"].map({lab: i for i, lab in enumerate(labels)}).to_numpy()
        if pd.isna(targets).any():
            raise DataError(
                f"Labels in predictions_val.csv that are not columns p_<label>: {set(oof['true']) - set(labels)}"
            )
    pooled = bootstrap_ci(probs, targets, labels, multilabel, resamples=resamples, seed=seed)
    return {
        "multilabel": multilabel,
        "folds_expected": k,
        "folds_found": [f["fold"] for f in folds],
        "data": folds[0]["data"],
        "model": folds[0]["model"],
        "seed": folds[0]["seed"],
        "selected": sorted({f["select"] for f in folds}),
        "runs": [str(f["run"]) for f in folds],
        "per_fold": per_fold.to_dict(orient="records"),
        "mean": {m: float(per_fold[m].mean()) for m in FOLD_METRICS},
        "std": {m: float(per_fold[m].std(ddof=1)) if len(per_fold) > 1 else float("nan") for m in FOLD_METRICS},
        "pooled": pooled,
        "oof": oof,
    }


def render(summary: dict) -> str:
    """The cv_summary.md text."""
    selected = ", ".join(summary["selected"])
    caveat = (
        "final epoch of each fold, no selection on the scored images"
        if summary["selected"] == ["last"]
        else "best epoch of each fold, chosen on that fold's own validation images: optimistic"
    )
    head = ["fold", "n", *FOLD_METRICS]
    rows = [[str(r["fold"]), str(r["n"]), *[fmt(r[m]) for m in FOLD_METRICS]] for r in summary["per_fold"]]
    rows.append(["mean ± sd", "", *[f"{fmt(summary['mean'][m])} ± {fmt(summary['std'][m])}" for m in FOLD_METRICS]])
    pooled = summary["pooled"]
    pooled_rows = [[m, fmt_ci(pooled[m])] for m in ("accuracy", "auroc_macro", "f1_macro") if m in pooled]
    return "\n".join(
        [
            f"# {summary['folds_expected']}-fold cross-validation: {summary['model']} on {summary['data']}"
            + ("" if len(summary["folds_found"]) == summary["folds_expected"] else " (incomplete)"),
            "",
            f"Folds found {summary['folds_found']} of {summary['folds_expected']}; seed {summary['seed']}; "
            f"checkpoint: {selected} = {caveat}.",
            "",
            table(head, rows),
            "",
            f"Pooled out-of-fold predictions ({len(summary['oof'])} images, each scored by the one model that "
            "did not train on it), 95% bootstrap CIs:",
            "",
            table(["metric", "value [95% CI]"], pooled_rows),
            "",
        ]
    )


def write_summary(summary: dict, out: Path) -> Path:
    """Writes cv_summary.md/.json, cv_folds.csv and oof_predictions.csv to ``out``; returns the .md path."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "oof_predictions.csv", summary["oof"])
    write_csv(out / "cv_folds.csv", pd.DataFrame(summary["per_fold"]))
    write_json(out / "cv_summary.json", {k: v for k, v in summary.items() if k != "oof"})
    return write_text(out / "cv_summary.md", render(summary))


def main(argv: list[str] | None = None) -> Path:
    """Command line: ``runs=<multirun dir> [resamples=1000] [seed=0] [out=<dir>]``."""
    from lungnet.cli import parse_key_values, run_safely

    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    usage = "python -m lungnet.evaluation.crossval runs=<multirun dir> [resamples=1000] [seed=0] [out=<dir>]"
    cfg = parse_key_values(argv, DEFAULTS, usage, required=("runs",))

    def run() -> Path:
        summary = summarise(find_fold_runs(cfg.runs), int(cfg.resamples), int(cfg.seed))
        path = write_summary(summary, Path(cfg.out or cfg.runs))
        log.info("Wrote %s\n%s", path, render(summary))
        return path

    return run_safely(run)


if __name__ == "__main__":
    main()
