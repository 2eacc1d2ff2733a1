"""The fold models of a cross-validation averaged, against one model trained on the same images, on a held-out split.

Both runs carve the same held-out split (`data.test_fraction`, same data.split_seed: the test rows are chosen before the
folds or the val split), so each fold model and the single model wrote `predictions_test.csv` on the same
images (uncalibrated probabilities). The ensemble averages the fold models' probabilities, as
`evaluate.py ckpt=<multirun dir>` does without temperatures; every comparison is paired, resampling whole
patients (ids from the single run's `splits/test.csv`).

Example:
    python train.py experiment=darkcovidnet_best data.root=../shared/data/darkcovidnet data.test_fraction=0.2 \
        hydra.run.dir=outputs/ho_single
    python train.py -m experiment=darkcovidnet_best data.root=../shared/data/darkcovidnet data.test_fraction=0.2 \
        data.cv_folds=5 data.cv_fold=0,1,2,3,4 hydra.sweep.dir=outputs/ho_cv
    python -m bench.studies.heldout_ensemble outputs/ho_cv outputs/ho_single --out outputs/heldout_ensemble.json
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common.cli import main
from bench.common.cv_common import add_pair_arguments, checked_folds, log_differences
from lungnet.evaluation.folds import oof_arrays, patient_groups
from lungnet.scoring import stats
from lungnet.scoring.metrics import compute_metrics

log = logging.getLogger("bench.heldout_ensemble")


def read_test(run: Path, order: pd.Index | None = None) -> pd.DataFrame:
    """A run's ``predictions_test.csv`` indexed by path (in ``order`` when given).

    Raises:
        SystemExit: no test predictions, or other images than ``order``.
    """
    path = Path(run) / "predictions_test.csv"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: train with data.test_fraction>0 (the same for both runs)")
    table = pd.read_csv(path).set_index("path")
    if order is not None:
        if set(table.index) != set(order):
            raise SystemExit(
                f"{path} holds other test images than the single run: same data.split_seed and test_fraction?"
            )
        table = table.loc[order]
    return table


def compare(cv_runs: str, single_run: str, resamples: int = 1000) -> dict:
    """Accuracy and AUROC of the fold ensemble, each fold model and the single model, with paired differences."""
    single = read_test(Path(single_run))
    patients = pd.read_csv(Path(single_run) / "splits" / "test.csv").set_index("path")["patient"]
    folds = checked_folds(cv_runs)
    members = [read_test(f["run"], single.index) for f in folds]
    if any((m["true"] != single["true"]).any() for m in members):
        raise SystemExit("the runs give some test images different labels")
    labels, single_probs, targets = oof_arrays(single.reset_index(), False)
    member_probs = [oof_arrays(m.reset_index(), False)[1] for m in members]
    ensemble = np.mean(member_probs, axis=0)
    groups = patient_groups(single.reset_index().assign(patient=patients.reindex(single.index).to_numpy()))
    named = [("ensemble", ensemble), *((f"fold {f['fold']}", p) for f, p in zip(folds, member_probs, strict=True))]
    paired = {
        f"{name} - single": stats.paired_bootstrap(probs, single_probs, targets, False, resamples, groups=groups)
        for name, probs in named
    }
    return {
        "cv_runs": cv_runs,
        "single_run": single_run,
        "images": len(single),
        "patient_groups": None if groups is None else int(len(np.unique(groups))),
        "labels": labels,
        "confusion_ensemble": compute_metrics(ensemble, targets, labels, False)["confusion_matrix"],
        "confusion_single": compute_metrics(single_probs, targets, labels, False)["confusion_matrix"],
        "paired": paired,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The cross-validation and the single run to pair."""
    add_pair_arguments(
        parser,
        "a cross-validation multirun folder trained with data.test_fraction",
        "one run of the same recipe, data.split_seed and data.test_fraction",
    )


def run(args: argparse.Namespace) -> dict:
    """Pairs the fold ensemble with the single model on the held-out images."""
    result = compare(args.first, args.second, args.resamples)
    for name, metrics in result["paired"].items():
        log_differences(metrics, f"{name} ", ("accuracy", "auroc_macro", "loss"))
    log.info("%d test images, %s patient groups resampled", result["images"], result["patient_groups"])
    return result


if __name__ == "__main__":
    main("heldout_ensemble", __doc__, add_arguments, run)
