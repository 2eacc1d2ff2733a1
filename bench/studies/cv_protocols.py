"""Two cross-validations of the same images under different fold assignments (e.g. folds by image vs folds by
patient), compared image by image: each image's out-of-fold probability under one protocol against the other,
with a paired bootstrap that resamples whole patients (ids from the first run's split files).

`lungnet-crossval baseline=` refuses such a pair on purpose (its folds hold different images); this answers the
other question: how much does the protocol, not the recipe, move the pooled estimate?

Example:
    python -m bench.studies.cv_protocols outputs/cv_grouped outputs/live14 --out outputs/cv_protocols.json
"""

from __future__ import annotations

import argparse
import logging

import numpy as np

from bench.common.cli import main
from bench.common.cv_common import add_pair_arguments, log_differences, out_of_fold
from lungnet.evaluation.folds import oof_arrays, patient_groups
from lungnet.scoring import stats

log = logging.getLogger("bench.cv_protocols")


def compare(first: str, second: str, resamples: int = 1000) -> dict:
    """Paired differences first - second over the images both pooled.

    Raises:
        SystemExit: the two runs did not score the same images, or other labels.
    """
    a, folds_a = out_of_fold(first)
    b, folds_b = out_of_fold(second)
    if set(a.index) != set(b.index) or [c for c in a.columns if c.startswith("p_")] != [
        c for c in b.columns if c.startswith("p_")
    ]:
        raise SystemExit(f"{first} and {second} did not score the same images with the same labels")
    b = b.loc[a.index]
    if (a["true"] != b["true"]).any():
        raise SystemExit("the two runs give some images different labels")
    labels, probs_a, targets = oof_arrays(a.reset_index(), False)
    _, probs_b, _ = oof_arrays(b.reset_index(), False)
    groups = patient_groups(a.reset_index())
    metrics = stats.paired_bootstrap(probs_a, probs_b, targets, False, resamples=resamples, groups=groups)
    return {
        "first": first,
        "second": second,
        "images": len(a),
        "folds": [len(folds_a), len(folds_b)],
        "patients": None if groups is None else int(len(np.unique(groups))),
        "labels": labels,
        "metrics": metrics,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The two cross-validations to pair."""
    add_pair_arguments(
        parser,
        "a cross-validation multirun folder (its split files name the patients)",
        "another cross-validation of the same images",
    )


def run(args: argparse.Namespace) -> dict:
    """Pairs the two protocols image by image."""
    result = compare(args.first, args.second, args.resamples)
    log_differences(result["metrics"])
    log.info("%d images, %s patient groups resampled", result["images"], result["patients"])
    return result


if __name__ == "__main__":
    main("cv_protocols", __doc__, add_arguments, run)
