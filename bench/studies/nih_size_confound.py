"""Per-finding AUROC of an NIH evaluation, overall and within each native image size (a shortcut check).

    python -m bench.studies.nih_size_confound outputs/eval/<date>/<time>/predictions.csv

The NIH sample in ../shared/data/nih mixes 64 px and 256 px images, and the two sizes do not carry the
same findings (Pneumonia images are almost all 256 px, Emphysema ones mostly 64 px). A model can score
well by telling the sizes apart. This prints the AUROC of every finding on all images, on each size
alone, and the AUROC of the native size by itself as a "classifier", so the report can say how much of
a number may come from the shortcut.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from bench.common.cli import main
from lungnet.evaluation.report import fmt, table
from lungnet.scoring.stats import binary_auroc as auroc


def native_width(path: str) -> int:
    """Pixel width of an image file (header only)."""
    with Image.open(path) as image:
        return image.size[0]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The NIH evaluation's predictions."""
    parser.add_argument("predictions", type=Path, help="predictions.csv of evaluate.py on an nih14 checkpoint")


def run(args: argparse.Namespace) -> dict:
    """AUROC per finding overall, per native size, and of the size alone; the printed table."""
    preds = pd.read_csv(args.predictions)
    sizes = np.array([native_width(p) for p in preds["path"]])
    native = sorted(set(sizes.tolist()))
    truth = preds["true"].fillna("").str.split("|")
    rows = []
    for col in (c for c in preds if c.startswith("p_")):
        label, score = col[2:], preds[col].to_numpy()
        y = truth.apply(lambda s, lab=label: lab in s).to_numpy()
        row = [label, str(int(y.sum())), fmt(auroc(y, score))]
        row += [f"{fmt(auroc(y[sizes == n], score[sizes == n]))} ({int(y[sizes == n].sum())})" for n in native]
        rows.append([*row, fmt(auroc(y, sizes.astype(float)))])
    counts = ", ".join(f"{n} px: {int((sizes == n).sum())}" for n in native)
    print(f"{args.predictions} ({len(preds)} images; {counts})\n")
    header = ["finding", "positives", "AUROC all", *[f"AUROC {n} px (positives)" for n in native], "size alone"]
    print(table(header, rows))
    return {"predictions": str(args.predictions), "counts": counts, "header": header, "rows": rows}


if __name__ == "__main__":
    main("nih_size_confound", __doc__, add_arguments, run)
