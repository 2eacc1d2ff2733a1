"""What the cross-validation benchmarks share: their command line and the checked fold runs they read."""

from __future__ import annotations

import argparse
import logging

import pandas as pd
import torch

from lungnet.evaluation.folds import check_folds, find_fold_runs, load_fold

log = logging.getLogger("bench")


def add_cv_arguments(parser: argparse.ArgumentParser, runs_help: str, extra: dict[str, str] | None = None) -> None:
    """Adds ``runs [--data-root] [--threads] [--resamples]`` and the ``extra`` options (flag: help, each taking one
    value, default None) to the shared bench parser (`bench.common.cli`)."""
    parser.add_argument("runs", help=runs_help)
    parser.add_argument("--data-root", default=None, help="the data folder, when it moved since training")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resamples", type=int, default=1000)
    for flag, text in (extra or {}).items():
        parser.add_argument(flag, default=None, help=text)


def set_threads(args: argparse.Namespace) -> None:
    """Sets torch's threads to ``--threads``."""
    torch.set_num_threads(args.threads)


def add_pair_arguments(parser: argparse.ArgumentParser, first_help: str, second_help: str) -> None:
    """Adds ``first second [--resamples]`` (two runs to pair) to the shared bench parser."""
    parser.add_argument("first", help=first_help)
    parser.add_argument("second", help=second_help)
    parser.add_argument("--resamples", type=int, default=1000)


def log_differences(metrics: dict[str, dict], name: str = "", keys: tuple[str, ...] | None = None) -> None:
    """One line per metric of a `lungnet.scoring.stats.paired_bootstrap` result: A vs B, A - B [interval]."""
    for key in keys or tuple(metrics):
        m = metrics[key]
        log.info("%s%s: %.3f vs %.3f, %+.3f [%+.3f, %+.3f]", name, key, m["a"], m["b"], m["diff"], m["lo"], m["hi"])


def checked_folds(runs: str) -> list[dict]:
    """The finished fold runs under ``runs`` (`lungnet.evaluation.folds.load_fold`), refused unless they belong
    together (`check_folds`)."""
    folds = [load_fold(r) for r in find_fold_runs(runs)]
    check_folds(folds)
    return folds


def out_of_fold(runs: str) -> tuple[pd.DataFrame, list[dict]]:
    """The run's pooled validation predictions indexed by image path (with a ``fold`` column), and its folds."""
    folds = checked_folds(runs)
    return pd.concat([f["predictions"].assign(fold=f["fold"]) for f in folds]).set_index("path"), folds
