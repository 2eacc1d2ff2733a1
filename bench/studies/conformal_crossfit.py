"""Coverage of lungnet's split-conformal sets on images exchangeable with, but apart from, the calibration images.

    python -m bench.studies.conformal_crossfit <evaluate run>/predictions.csv [--alpha 0.1 0.05] [--repeats 200]

Reads the calibrated class probabilities (``p_<label>``) and true labels of an ``evaluate.py`` run (single-label),
splits the images at random into a calibration half and a held-out half, builds the 1 - alpha prediction sets of the
held-out half from the calibration half with lungnet's own code
(`lungnet.artifacts.decision.DecisionRecord.prediction_sets`,
crepes underneath), and logs the held-out coverage and mean set size over ``--repeats`` halvings (mean, and the 5th
and 95th percentiles). For a run directory whose checkpoint has no test split (a cross-validation fold), this is the
held-out view of ``conformal_coverage``; the temperature was fitted on all of the evaluated split, which is one
parameter shared by both halves. Discussed in docs/decisions.md.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common.cli import main
from lungnet.artifacts.decision import DecisionRecord

log = logging.getLogger("conformal_crossfit")


def halvings(probs: np.ndarray, truth: np.ndarray, labels: list[str], alpha: float, repeats: int) -> np.ndarray:
    """(repeats, 2) held-out coverage and mean set size of the sets calibrated on the other half."""
    rng = np.random.default_rng(0)
    rows = np.arange(len(truth))
    out = []
    for _ in range(repeats):
        order = rng.permutation(len(truth))
        cal, held = order[: len(order) // 2], order[len(order) // 2 :]
        scores = 1.0 - probs[cal, truth[cal]]
        record = DecisionRecord(labels, False, "", alpha=alpha, conformal_scores=scores)
        sets = record.prediction_sets(probs[held])[0]  # (sets, ambiguous, empty)
        out.append((float(sets[rows[: len(held)], truth[held]].mean()), float(sets.sum(1).mean())))
    return np.array(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The evaluation's predictions, the miscoverage levels and the number of halvings."""
    parser.add_argument("predictions", type=Path, help="predictions.csv of an evaluate.py run")
    parser.add_argument("--alpha", type=float, nargs="+", default=[0.1, 0.05])
    parser.add_argument("--repeats", type=int, default=200)


def run(args: argparse.Namespace) -> dict:
    """Held-out coverage and set size per alpha; the record holds the logged table."""
    table = pd.read_csv(args.predictions)
    labels = [c[2:] for c in table.columns if c.startswith("p_")]
    probs = table[[f"p_{lab}" for lab in labels]].to_numpy(dtype=np.float64)
    truth = np.array([labels.index(t) for t in table["true"]])
    lines = [
        f"{args.predictions}: {len(truth)} images, calibrated on a random half, measured on the other "
        f"({args.repeats} halvings; mean [5th, 95th percentile])",
        "",
        "| alpha | target | held-out coverage | mean set size |",
        "|---|---|---|---|",
    ]
    for alpha in args.alpha:
        res = halvings(probs, truth, labels, alpha, args.repeats)
        cov, size = (f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in zip(*_summary(res), strict=True))
        lines.append(f"| {alpha} | {1 - alpha:.2f} | {cov} | {size} |")
    log.info("\n".join(lines))
    return {"predictions": str(args.predictions), "table": lines}


def _summary(res: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return res.mean(0), np.quantile(res, 0.05, axis=0), np.quantile(res, 0.95, axis=0)


if __name__ == "__main__":
    main("conformal_crossfit", __doc__, add_arguments, run)
