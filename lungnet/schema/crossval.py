"""``crossval.yaml``: `CrossvalConfig`, the options of ``lungnet-crossval``."""

from __future__ import annotations

from dataclasses import dataclass

from lungnet.schema.fields import opt


@dataclass
class CrossvalConfig:
    """``lungnet-crossval``: the summary of a k-fold cross-validation multirun (`lungnet.evaluation.folds`)."""

    runs: str = opt(help="a multirun directory of finished folds (train.py -m ... data.cv_fold=0,1,...)")
    baseline: str | None = opt(
        None, "another k-fold multirun of the same data, split seed and folds: a paired comparison"
    )
    resamples: int = opt(1000, "bootstrap resamples for the intervals", ge=1)
    seed: int = opt(0, "the bootstrap's seed")
    out: str | None = opt(None, "where the summary goes; null: into the runs directory itself")
