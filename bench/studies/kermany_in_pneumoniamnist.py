"""Are full-resolution Kermany images inside PneumoniaMNIST, and which preparation reproduces MedMNIST's?

    python -m bench.studies.kermany_in_pneumoniamnist ../shared/data/kermany_val16 ../shared/data/pneumoniamnist

MedMNIST v2 describes PneumoniaMNIST as the Kermany images centre-cropped and resized to 28 x 28 (its train and val
splits come from Kermany's training set). For each full-resolution image and each candidate preparation this logs
the mean absolute difference (grey levels of 255) to the nearest PneumoniaMNIST image, the distance to the second
nearest, and where the nearest one is. A nearest match far below the second nearest is the same radiograph.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common.cli import main
from bench.studies.ood_study import folder_files, medmnist_like, reduced
from lungnet.data.images import read_image

log = logging.getLogger("kermany_in_pneumoniamnist")


def nearest(bank: np.ndarray, files: list[str], prepare) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each file prepared by ``prepare``: (distance to the nearest bank image, to the second nearest, its index);
    distances are mean absolute differences in grey levels of 255."""
    first, second, index = [], [], []
    for f in files:
        d = np.abs(bank - prepare(read_image(f)) * 255.0).mean((1, 2))
        order = np.argsort(d)[:2]
        first.append(d[order[0]])
        second.append(d[order[1]])
        index.append(order[0])
    return np.array(first), np.array(second), np.array(index)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The full-resolution images and the PneumoniaMNIST folder."""
    parser.add_argument("full_res", help="folder of full-resolution Kermany images")
    parser.add_argument("pneumoniamnist", help="PneumoniaMNIST folder ({train,val}/{NORMAL,PNEUMONIA}/*.png)")


def run(args: argparse.Namespace) -> dict:
    """Nearest PneumoniaMNIST image of every full-resolution image under each preparation; the logged table."""
    refs = sorted(str(p) for p in Path(args.pneumoniamnist).rglob("*.png"))
    bank = np.stack([np.asarray(Image.open(f).convert("L"), dtype=np.float32) for f in refs])
    files = folder_files(args.full_res)
    lines = [
        f"{len(files)} images against {len(bank)} PneumoniaMNIST images",
        "",
        "| preparation | nearest: median (max) | second nearest: min (median) |",
        "|---|---|---|",
    ]
    for name, prepare in (("no crop, box filter to 28 px", reduced), ("MedMNIST: centre crop, 28 px", medmnist_like)):
        first, second, index = nearest(bank, files, prepare)
        near, second_near = (
            f"{np.median(first):.1f} ({first.max():.1f})",
            f"{second.min():.1f} ({np.median(second):.1f})",
        )
        lines.append(f"| {name} | {near} | {second_near} |")
    where = [str(Path(refs[i]).relative_to(args.pneumoniamnist)) for i in index]
    splits = Counter(w.split("/")[0] for w in where)
    lines += ["", f"Nearest PneumoniaMNIST image (MedMNIST preparation): {dict(splits)}", ""]
    lines += [
        f"- {Path(f).parent.name}/{Path(f).name} -> {w} ({a:.1f} vs {b:.1f})"
        for f, w, a, b in zip(files, where, first, second, strict=True)
    ]
    log.info("\n".join(lines))
    return {"table": lines}


if __name__ == "__main__":
    main("kermany_in_pneumoniamnist", __doc__, add_arguments, run)
