"""Cross-validation summary: per-fold metrics, their mean and spread, and pooled out-of-fold metrics with CIs.

Usage, after a k-fold multirun (each fold is one run directory)::

    python train.py -m experiment=darkcovidnet_best data.cv_folds=5 data.cv_fold=0,1,2,3,4 checkpoint.select=last
    python -m lungnet.evaluation.crossval runs=outputs/multirun/<date>/<time> [resamples=1000] [out=<dir>]
    lungnet-crossval runs=<variant multirun> baseline=<baseline multirun>    # the same command, installed

Each fold's validation predictions (``predictions_val.csv``, written by train.py) are pooled into one
out-of-fold prediction per image. The summary refuses folds that do not belong together: different fold
counts, split seeds (``data.split_seed``), label lists or datasets, a fold seen twice, or validation images shared
between folds.
With ``checkpoint.select=best`` each fold's epoch was chosen on the same images it is scored on, which
flatters the numbers; the summary says which was used. Written to ``out`` (default: the multirun
directory): ``cv_summary.md``, ``cv_summary.json``, ``cv_folds.csv`` and ``oof_predictions.csv``.

With ``baseline=<another k-fold multirun>`` (the same data, split seed and folds, e.g. another model or recipe) the
two are compared on the images of the folds both have: the difference of each pooled metric with a paired
bootstrap interval (`lungnet.scoring.stats.paired_bootstrap`), written to ``cv_comparison.md`` / ``.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from lungnet.artifacts.checkpoint import training_runs
from lungnet.data.sources import DataError
from lungnet.evaluation.report import fmt, fmt_ci, table
from lungnet.io import write_csv, write_json, write_text
from lungnet.scoring.resample import Resampler
from lungnet.scoring.stats import bootstrap_ci, paired_bootstrap

log = logging.getLogger(__name__)

FOLD_METRICS = ("accuracy", "auroc_macro", "f1_macro", "recall_macro", "precision_macro")


def find_fold_runs(root: str | Path) -> list[Path]:
    """Run directories under ``root`` holding a finished fold (config.yaml, metrics.json, predictions_val.csv).

    Unfinished runs (no ``metrics.json``: a fold killed mid-training) are skipped and named in a warning
    (`lungnet.artifacts.checkpoint.training_runs`), and the summary says which folds are missing.

    Raises:
        FileNotFoundError: ``root`` is missing or holds no finished run.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"Not a directory: {root}")
    finished, unfinished = training_runs(root)
    runs = [run for run in finished if (run / "predictions_val.csv").is_file()]
    if not runs:
        skipped = f" ({len(unfinished)} unfinished, skipped: {', '.join(map(str, unfinished))})" if unfinished else ""
        raise FileNotFoundError(f"No finished runs (metrics.json + predictions_val.csv) under {root}{skipped}")
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
    "paths.",
    "logger.",
    "callbacks.model_checkpoint.dirpath",
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
        split_seed = int(cfg.data.get("split_seed", cfg.seed))  # a run older than data.split_seed: its seed
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{run} is not a finished fold (config.yaml / metrics.json with val metrics): {exc}") from exc
    return {
        "run": run,
        "fold": int(cfg.data.get("cv_fold", 0)),
        "folds": int(cfg.data.get("cv_folds", 0)),
        "split_seed": split_seed,
        "data": str(cfg.data.name),
        "model": str(cfg.model.name),
        "settings": _settings(cfg),
        "select": str(metrics.get("selected", "best")),
        "val": metrics["val"],
        "predictions": with_patients(pd.read_csv(run / "predictions_val.csv"), run / "splits" / "val.csv"),
    }


def with_patients(predictions: pd.DataFrame, split_file: Path) -> pd.DataFrame:
    """``predictions`` with a ``patient`` column from the fold's split file ('' where unknown or no file)."""
    patients = pd.Series(dtype=str)
    if split_file.is_file():
        table = pd.read_csv(split_file, dtype={"patient": str}, keep_default_na=False)
        patients = table.drop_duplicates("path").set_index("path")["patient"]
    return predictions.assign(patient=predictions["path"].map(patients).fillna("").astype(str))


def patient_groups(oof: pd.DataFrame) -> np.ndarray | None:
    """Bootstrap groups: the patient, or the image itself when its patient is unknown (None: no patient known)."""
    patient = oof["patient"].fillna("").astype(str) if "patient" in oof else pd.Series("", index=oof.index)
    if (patient == "").all():
        return None
    return np.where(patient == "", "img:" + oof["path"].astype(str), "pat:" + patient).astype(str)


def check_folds(folds: list[dict]) -> None:
    """Raises DataError unless the runs are the k distinct folds of one k-fold split."""
    for key in ("folds", "split_seed", "data", "model"):
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


def oof_arrays(oof: pd.DataFrame, multilabel: bool) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Labels, (N, C) probabilities and targets of out-of-fold predictions (columns ``true``, ``p_<label>``).

    Multi-label ``true`` holds ``A|B``: one 0/1 target column per finding.

    Raises:
        DataError: single-label ``true`` values that are not among the ``p_<label>`` columns.
    """
    labels = [c[2:] for c in oof.columns if c.startswith("p_")]
    probs = oof[[f"p_{lab}" for lab in labels]].to_numpy(dtype=np.float64)
    if multilabel:
        truth = oof["true"].fillna("").astype(str).str.split("|")
        return labels, probs, np.array([[float(lab in t) for lab in labels] for t in truth])
    targets = oof["true"].map({lab: i for i, lab in enumerate(labels)}).to_numpy()
    if pd.isna(targets).any():
        raise DataError(
            f"Labels in predictions_val.csv that are not columns p_<label>: {set(oof['true']) - set(labels)}"
        )
    return labels, probs, targets


def summarise(runs: list[Path], *, resamples: int, seed: int) -> dict:
    """Per-fold table, mean and standard deviation, and pooled out-of-fold metrics with bootstrap CIs
    (``resamples`` and ``seed``: conf/crossval.yaml's, as the command passes them)."""
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
    multilabel = "accuracy" not in folds[0]["val"]  # multi-label runs report AUROC/F1 per finding, no accuracy
    labels, probs, targets = oof_arrays(oof, multilabel)
    groups = patient_groups(oof)
    pooled = bootstrap_ci(probs, targets, labels, multilabel, resamples=resamples, seed=seed, groups=groups)
    return {
        "multilabel": multilabel,
        "folds_expected": k,
        "folds_found": [f["fold"] for f in folds],
        "data": folds[0]["data"],
        "model": folds[0]["model"],
        "split_seed": folds[0]["split_seed"],
        "selected": sorted({f["select"] for f in folds}),
        "runs": [str(f["run"]) for f in folds],
        "per_fold": per_fold.to_dict(orient="records"),
        "mean": {m: float(per_fold[m].mean()) for m in FOLD_METRICS},
        "std": {m: float(per_fold[m].std(ddof=1)) if len(per_fold) > 1 else float("nan") for m in FOLD_METRICS},
        "pooled": pooled,
        "resampled": Resampler(len(oof), groups).describe(),
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
            f"Folds found {summary['folds_found']} of {summary['folds_expected']}; split seed {summary['split_seed']}; "
            f"checkpoint: {selected} = {caveat}.",
            "",
            table(head, rows),
            "",
            f"Pooled out-of-fold predictions ({len(summary['oof'])} images, each scored by the one model that "
            f"did not train on it), 95% bootstrap CIs (resampling {summary.get('resampled', 'images')}):",
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


def compare(variant: dict, baseline: dict, *, resamples: int, seed: int) -> dict:
    """Paired comparison of two cross-validations' pooled out-of-fold predictions on the images both scored.

    Args:
        variant: a `summarise` result (A).
        baseline: another one (B), of the same k-fold split.

    Returns:
        ``{"folds", "images", "variant", "baseline", "metrics"}``, ``metrics`` from `paired_bootstrap` (A - B).

    Raises:
        DataError: different data, split seeds, fold counts or labels, no fold in common, or a common fold whose
            validation images differ (the splits are not the same).
    """
    for key in ("data", "split_seed", "folds_expected", "multilabel"):
        if variant[key] != baseline[key]:
            raise DataError(
                f"The cross-validations differ in {key}: {variant[key]} vs {baseline[key]}; "
                "compare runs of the same k-fold split (same data, data.split_seed and data.cv_folds)"
            )
    folds = sorted(set(variant["folds_found"]) & set(baseline["folds_found"]))
    if not folds:
        raise DataError(f"No fold in common: {variant['folds_found']} vs {baseline['folds_found']}")
    a = variant["oof"][variant["oof"]["fold"].isin(folds)].set_index("path")
    b = baseline["oof"][baseline["oof"]["fold"].isin(folds)].set_index("path")
    if list(a.columns) != list(b.columns):
        raise DataError("The cross-validations predict different labels")
    for fold in folds:
        if set(a.index[a["fold"] == fold]) != set(b.index[b["fold"] == fold]):
            raise DataError(f"Fold {fold} holds different validation images in the two runs: not the same split")
    b = b.loc[a.index]
    _, probs_a, targets = oof_arrays(a, variant["multilabel"])
    _, probs_b, _ = oof_arrays(b, variant["multilabel"])
    known = a["patient"].where(a["patient"] != "", b["patient"])  # load_fold gives every fold a patient column
    groups = patient_groups(a.assign(patient=known).reset_index())
    metrics = paired_bootstrap(
        probs_a, probs_b, targets, variant["multilabel"], resamples=resamples, seed=seed, groups=groups
    )
    return {
        "folds": folds,
        "images": len(a),
        "resampled": Resampler(len(a), groups).describe(),
        "variant": {"model": variant["model"], "runs": variant["runs"]},
        "baseline": {"model": baseline["model"], "runs": baseline["runs"]},
        "metrics": metrics,
    }


def render_comparison(result: dict) -> str:
    """The cv_comparison.md text."""
    a, b = result["variant"], result["baseline"]
    rows = [
        [m, fmt(v["a"]), fmt(v["b"]), f"{v['diff']:+.3f} [{v['lo']:+.3f}, {v['hi']:+.3f}]", fmt(v["a_better"], 2)]
        for m, v in result["metrics"].items()
    ]
    where = sorted({str(Path(r).parent) for r in a["runs"]}), sorted({str(Path(r).parent) for r in b["runs"]})
    return "\n".join(
        [
            f"# Paired cross-validation comparison: {a['model']} (A) vs {b['model']} (B)",
            "",
            f"A: {', '.join(where[0])}; B: {', '.join(where[1])}. Folds {result['folds']}, {result['images']} "
            "images, each scored out of fold by both. Differences A - B with 95% paired bootstrap intervals "
            f"(the same {result.get('resampled', 'images')} resampled for both); the last column is the share of "
            "resamples in which A scored better (lower, for loss).",
            "",
            table(["metric", "A", "B", "A - B [95% CI]", "A better"], rows),
            "",
        ]
    )


def run(cfg: DictConfig) -> Path:
    """``lungnet-crossval``: summarises ``cfg.runs`` (and compares it with ``cfg.baseline``); returns the last report.

    Writes into ``cfg.out`` (default: the ``runs`` directory itself).
    """
    summary = summarise(find_fold_runs(cfg.runs), resamples=int(cfg.resamples), seed=int(cfg.seed))
    out = Path(cfg.out or cfg.runs)
    path = write_summary(summary, out)
    log.info("Wrote %s\n%s", path, render(summary))
    if cfg.baseline:
        base = summarise(find_fold_runs(cfg.baseline), resamples=int(cfg.resamples), seed=int(cfg.seed))
        result = compare(summary, base, resamples=int(cfg.resamples), seed=int(cfg.seed))
        write_json(out / "cv_comparison.json", result)
        path = write_text(out / "cv_comparison.md", render_comparison(result))
        log.info("Wrote %s\n%s", path, render_comparison(result))
    return path
