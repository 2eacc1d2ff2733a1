"""Does test-time augmentation pay? Scores each cross-validation fold's model on its own validation images
under a few views (flip, zoom, shift) and averages the probabilities of view sets, pooled out of fold.

Every image is scored only by the fold model that did not train on it; the views are the evaluation
pipeline's tensor transformed once more (zoom-out and shifts fill with black, as the training Affine does).

Example:
    python -m bench.studies.tta outputs/multirun/2026-11-24/14-06-58 --data-root ../shared/data/darkcovidnet \
        --out bench/results/tta_darkcovidnet.json
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.common.cli import main
from bench.common.cv_common import add_cv_arguments, checked_folds, set_threads
from lungnet.artifacts.checkpoint import load_model
from lungnet.data.transforms import Normalize
from lungnet.evaluation.eval_data import build_eval_data
from lungnet.scoring import stats

log = logging.getLogger("bench.tta")

VIEW_SETS = {
    "identity": ["identity"],
    "identity + hflip": ["identity", "hflip"],
    "identity + zoom 0.9/1.1": ["identity", "zoom1.1", "zoom0.9"],
    "identity + shift ±8 px": ["identity", "shift-8", "shift+8"],
    "identity + zooms + shifts": ["identity", "zoom1.1", "zoom0.9", "shift-8", "shift+8"],
    "all six": ["identity", "hflip", "zoom1.1", "zoom0.9", "shift-8", "shift+8"],
}


def _paste(image: torch.Tensor, black: torch.Tensor, side: int, top: int, left: int) -> torch.Tensor:
    """``image`` pasted at (``top``, ``left``) on a black ``side`` x ``side`` canvas (what falls outside is cut)."""
    out = black.expand(image.shape[0], image.shape[1], side, side).clone()
    h, w = min(image.shape[-2], side - top), min(image.shape[-1], side - left)
    out[..., top : top + h, left : left + w] = image[..., :h, :w]
    return out


def views(x: torch.Tensor, black: torch.Tensor) -> dict[str, torch.Tensor]:
    """The batch ``x`` (N, C, S, S, normalised) under each view; ``black`` is (1, C, 1, 1) black in that space."""
    n = x.shape[-1]
    out = {"identity": x, "hflip": torch.flip(x, dims=[3])}
    big = F.interpolate(x, size=(round(n * 1.1),) * 2, mode="bilinear", align_corners=False, antialias=True)
    o = (big.shape[-1] - n) // 2
    out["zoom1.1"] = big[..., o : o + n, o : o + n]
    small = F.interpolate(x, size=(round(n * 0.9),) * 2, mode="bilinear", align_corners=False, antialias=True)
    m = small.shape[-1]
    out["zoom0.9"] = _paste(small, black, n, (n - m) // 2, (n - m) // 2)
    out["shift+8"] = _paste(x, black, n, 0, 8)
    out["shift-8"] = _paste(x[..., :, 8:], black, n, 0, 0)
    return out


@torch.no_grad()
def score_fold(run: Path, select: str, data_root: str | None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Probabilities per view on the fold's own validation images, and their targets."""
    loaded = load_model(run / "checkpoints" / f"{select}.ckpt")
    overrides = {"root": data_root, "num_workers": 0}
    spec = loaded.spec
    black = Normalize(spec.mean, spec.std, spec.in_chans)(np.zeros((1, 1), np.float32))[None]  # (1, C, 1, 1)
    model, probs, targets = loaded.model.eval(), {}, []
    with tempfile.TemporaryDirectory() as scratch:  # the split files and data report land here, not in the run
        dm = build_eval_data(loaded, overrides, "val", Path(scratch))
        for batch in dm.val_dataloader():
            for name, view in views(batch["image"], black).items():
                probs.setdefault(name, []).append(loaded.probabilities(model(view)).numpy())
            targets.append(batch["target"].numpy())
    return {k: np.concatenate(v) for k, v in probs.items()}, np.concatenate(targets)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The cross-validation run to score."""
    add_cv_arguments(parser, "a cross-validation multirun folder (python train.py -m ... data.cv_fold=...)")


def run(args: argparse.Namespace) -> dict:
    """Scores every fold under every view and pools the view sets; the record holds per-fold and pooled figures."""
    set_threads(args)
    t0 = time.perf_counter()
    folds = checked_folds(args.runs)
    pooled: dict[str, list[np.ndarray]] = {}
    targets, per_fold = [], {}
    labels = None
    for fold in folds:
        probs, y = score_fold(fold["run"], fold["select"], args.data_root)
        labels = labels or [c[2:] for c in fold["predictions"].columns if c.startswith("p_")]
        per_fold[fold["fold"]] = {k: float((p.argmax(1) == y).mean()) for k, p in probs.items()}
        rounded = {k: round(v, 3) for k, v in per_fold[fold["fold"]].items()}
        log.info("fold %d accuracy per view: %s", fold["fold"], rounded)
        for k, p in probs.items():
            pooled.setdefault(k, []).append(p)
        targets.append(y)
    y = np.concatenate(targets)
    results = {}
    for name, keys in VIEW_SETS.items():
        p = np.mean([np.concatenate(pooled[k]) for k in keys], axis=0)
        ci = stats.bootstrap_ci(p, y, labels, multilabel=False, resamples=args.resamples)
        results[name] = {m: ci[m] for m in ("accuracy", "auroc_macro")}
    print(f"\nPooled out-of-fold, {len(y)} images, {len(folds)} folds, 95% bootstrap CIs:\n")
    print("| views averaged | accuracy | macro AUROC |\n|---|---|---|")
    for name, r in results.items():
        a, u = r["accuracy"], r["auroc_macro"]
        cells = [f"{m['value']:.3f} [{m['lo']:.3f}, {m['hi']:.3f}]" for m in (a, u)]
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    print(f"\n{time.perf_counter() - t0:.0f} s")
    return {"runs": args.runs, "per_fold": per_fold, "pooled": results}


if __name__ == "__main__":
    main("tta", __doc__, add_arguments, run)
