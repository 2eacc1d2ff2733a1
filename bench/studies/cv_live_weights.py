"""Does the weight average pay? Scores each cross-validation fold's live (not averaged) final weights on the
fold's own validation images, next to the averaged weights the fold was scored with, pooled out of fold.

A run trained with ``swa.epochs`` or ``ema.decay`` keeps both in ``last.ckpt``: the average as ``state_dict``
(what ``predictions_val.csv`` and the CV summary score) and the live weights as ``current_model_state``. The
live weights are the same schedule without the average, so one CV run measures both, paired on the same images.

``--live-runs DIR`` also writes the live weights' folds as a cross-validation of their own (each fold's config with
the average turned off, its metrics.json and predictions_val.csv), the baseline the same schedule without the
average is, for ``lungnet-crossval runs=<another recipe> baseline=DIR``.

Example:
    python -m bench.studies.cv_live_weights outputs/cv_swa14 --data-root ../shared/data/darkcovidnet \
        --live-runs outputs/live14
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from bench.common.cli import main
from bench.common.cv_common import add_cv_arguments, checked_folds, set_threads
from lungnet.artifacts.checkpoint import load_model, read_checkpoint
from lungnet.evaluation.eval_data import build_eval_data
from lungnet.io import write_csv, write_json, write_text
from lungnet.scoring import stats
from lungnet.scoring.metrics import compute_metrics
from lungnet.scoring.outputs import predict_loader, predictions_table

log = logging.getLogger("bench.cv_live_weights")


def _probabilities(ckpt: Path, data_root: str | None, scratch: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    loaded = load_model(ckpt)
    dm = build_eval_data(loaded, {"root": data_root, "num_workers": 0}, "val", scratch)
    return predict_loader(loaded.model, dm.loader("val"), loaded.multilabel, desc=f"Scoring {ckpt.name}")


def score_fold(run: Path, data_root: str | None) -> dict[str, np.ndarray]:
    """Probabilities of the averaged and of the live final weights on the fold's validation images.

    Raises:
        SystemExit: the fold's ``last.ckpt`` holds no live weights (trained without a weight average).
    """
    last = run / "checkpoints" / "last.ckpt"
    ckpt = read_checkpoint(last)  # weights_only=True
    if "current_model_state" not in ckpt:
        raise SystemExit(f"{last} holds no current_model_state: train with swa.epochs or ema.decay")
    live = {k: v for k, v in ckpt.items() if k not in ("current_model_state", "averaging_state")}
    live["state_dict"] = ckpt["current_model_state"]
    with tempfile.TemporaryDirectory() as scratch:  # the split files and data report land here, not in the run
        path = Path(scratch) / "live.ckpt"
        torch.save(live, path)
        average, y, paths = _probabilities(last, data_root, Path(scratch) / "average")
        live_probs, _, live_paths = _probabilities(path, data_root, Path(scratch) / "live")
    if paths != live_paths:
        raise SystemExit(f"{run}: the two passes saw the validation images in different orders")
    labels = list(ckpt["hyper_parameters"]["labels"])
    return {"average": average, "live": live_probs, "targets": y, "paths": paths, "labels": labels}


def write_live_fold(run: Path, scored: dict[str, np.ndarray], out: Path) -> None:
    """Writes the live weights of fold ``run`` as a finished fold run.

    Args:
        run: the fold's run directory.
        scored: `score_fold`'s result for it.
        out: the folder to write: config.yaml (the weight average off: the schedule the live weights followed),
            metrics.json (final epoch) and predictions_val.csv, whose paths are those of the fold's own
            predictions_val.csv (so the folder pairs with the other runs of these folds wherever the data now is).

    Raises:
        SystemExit: the images scored are not the fold's own validation images, in its order.
    """
    cfg = OmegaConf.load(run / "config.yaml")
    for key in ("swa.epochs", "ema.decay", "callbacks.swa.epochs", "callbacks.ema.decay"):
        if OmegaConf.select(cfg, key) is not None:
            OmegaConf.update(cfg, key, 0)
    recorded = pd.read_csv(run / "predictions_val.csv")["path"].tolist()
    if [Path(p).parts[-2:] for p in recorded] != [Path(p).parts[-2:] for p in scored["paths"]]:
        raise SystemExit(f"{run}: the images scored are not those of its predictions_val.csv, in its order")
    metrics = {"val": compute_metrics(scored["live"], scored["targets"], scored["labels"], False), "selected": "last"}
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.yaml", OmegaConf.to_yaml(cfg))
    write_json(out / "metrics.json", metrics)
    write_csv(
        out / "predictions_val.csv",
        predictions_table(recorded, scored["live"], scored["targets"], scored["labels"], False),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The averaged cross-validation run, and where to write the live weights' folds."""
    add_cv_arguments(
        parser,
        "a cross-validation multirun folder trained with swa.epochs or ema.decay",
        extra={"--live-runs": "also write the live weights' folds here, a cross-validation to compare against"},
    )


def run(args: argparse.Namespace) -> dict:
    """Scores each fold's averaged and live weights and pairs them, pooled out of fold."""
    set_threads(args)
    t0 = time.perf_counter()
    folds = checked_folds(args.runs)
    live_runs = Path(args.live_runs).resolve() if args.live_runs else None
    if live_runs is not None and live_runs.is_relative_to(Path(args.runs).resolve()):
        raise SystemExit(f"--live-runs {args.live_runs} lies inside {args.runs}: write it elsewhere")
    scored, per_fold = [], {}
    for fold in folds:
        s = score_fold(fold["run"], args.data_root)
        per_fold[fold["fold"]] = {k: float((s[k].argmax(1) == s["targets"]).mean()) for k in ("average", "live")}
        log.info("fold %d accuracy: %s", fold["fold"], {k: round(v, 3) for k, v in per_fold[fold["fold"]].items()})
        scored.append(s)
        if live_runs is not None:
            write_live_fold(fold["run"], s, live_runs / f"fold{fold['fold']}")
    pooled = {k: np.concatenate([s[k] for s in scored]) for k in ("average", "live", "targets")}
    diff = stats.paired_bootstrap(
        pooled["average"], pooled["live"], pooled["targets"], multilabel=False, resamples=args.resamples
    )
    print(f"\nPooled out-of-fold, {len(pooled['targets'])} images, {len(folds)} folds; average - live, paired:\n")
    print("| metric | averaged weights | live weights | average - live [95% CI] | average better |")
    print("|---|---|---|---|---|")
    for metric in ("accuracy", "auroc_macro"):
        d = diff[metric]
        interval = f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"
        print(f"| {metric} | {d['a']:.3f} | {d['b']:.3f} | {interval} | {d['a_better']:.2f} |")
    print(f"\n{time.perf_counter() - t0:.0f} s")
    return {"runs": args.runs, "per_fold": per_fold, "paired": diff}


if __name__ == "__main__":
    main("cv_live_weights", __doc__, add_arguments, run)
