"""Does an ensemble of recipes pay? Averages the out-of-fold probabilities of two or more cross-validation runs
(same data, data.split_seed and folds; e.g. two recipes) image by image, and compares the average with each run, paired.

Every image is still scored only by models that did not train on it: each run's fold k model scored fold k. Only
the images of the folds every run has are used.

Example:
    python -m bench.studies.cv_ensemble outputs/cv_swa14 outputs/cv_mix --out outputs/cv_ensemble.json
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np

from bench.common.cli import main
from bench.common.cv_common import out_of_fold
from lungnet.scoring import stats

log = logging.getLogger("bench.cv_ensemble")


def aligned(runs: list[str]) -> tuple[list[str], list[np.ndarray], np.ndarray]:
    """Labels, each run's (N, C) probabilities and the targets over the images every run scored, in one order.

    Raises:
        SystemExit: runs of other data, split seeds or labels, or an image whose fold or label differs between runs.
    """
    tables, folds = zip(*(out_of_fold(r) for r in runs), strict=True)
    facts = [(f[0]["split_seed"], f[0]["data"]) for f in folds]
    if len(set(facts)) != 1:
        raise SystemExit(f"The runs are not the same cross-validation (data.split_seed, data): {list(facts)}")
    labels = [c[2:] for c in tables[0].columns if c.startswith("p_")]
    if any([c[2:] for c in t.columns if c.startswith("p_")] != labels for t in tables):
        raise SystemExit("The runs have different label lists")
    common = sorted(set.intersection(*(set(t.index) for t in tables)))
    if not common:
        raise SystemExit("The runs share no scored image (no common fold)")
    first = tables[0].loc[common, ["true", "fold"]]
    if any(not t.loc[common, ["true", "fold"]].equals(first) for t in tables[1:]):
        raise SystemExit("An image has another label or fold in one of the runs: not the same folds")
    probs = [t.loc[common, [f"p_{c}" for c in labels]].to_numpy(float) for t in tables]
    return labels, probs, first["true"].map({c: i for i, c in enumerate(labels)}).to_numpy(int)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The runs to average."""
    parser.add_argument("runs", nargs="+", help="two or more cross-validation multirun folders")
    parser.add_argument("--resamples", type=int, default=1000)


def run(args: argparse.Namespace) -> dict:
    """Averages the runs image by image and pairs the average with each run."""
    if len(args.runs) < 2:
        raise SystemExit("Give two or more cross-validation runs to average")
    t0 = time.perf_counter()
    labels, probs, y = aligned(args.runs)
    mean = np.mean(probs, axis=0)
    print(f"\n{len(y)} images scored out of fold by every run; ensemble = mean of the runs' probabilities.\n")
    print("| compared | accuracy A - B [95% CI] | A better | macro AUROC A - B [95% CI] |")
    print("|---|---|---|---|")
    results = {"runs": args.runs, "n": len(y), "ensemble": {}, "members": {}}
    ci = stats.bootstrap_ci(mean, y, labels, multilabel=False, resamples=args.resamples)
    results["ensemble"] = {m: ci[m] for m in ("accuracy", "auroc_macro")}
    for name, p in zip(args.runs, probs, strict=True):
        d = stats.paired_bootstrap(mean, p, y, multilabel=False, resamples=args.resamples)
        results["members"][name] = {m: d[m] for m in ("accuracy", "auroc_macro")}
        a, u = d["accuracy"], d["auroc_macro"]
        print(
            f"| ensemble ({a['a']:.3f} / {u['a']:.3f}) vs {name} ({a['b']:.3f} / {u['b']:.3f}) | "
            f"{a['diff']:+.3f} [{a['lo']:+.3f}, {a['hi']:+.3f}] | {a['a_better']:.2f} | "
            f"{u['diff']:+.3f} [{u['lo']:+.3f}, {u['hi']:+.3f}] |"
        )
    print(f"\n{time.perf_counter() - t0:.0f} s")
    return results


if __name__ == "__main__":
    main("cv_ensemble", __doc__, add_arguments, run)
