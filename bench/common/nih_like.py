"""Generates an NIH-like data set (``images/*.png`` + ``Data_Entry_2017.csv``) of full-size radiographs for timing
the setup scan (issue #27): each image is a real NIH image of ``../shared/data/nih`` resized to ``--size`` px with a
seeded small rotation, shift, gain and flip, so every file has distinct bytes.

    python -m bench.common.nih_like --dest /tmp/nihlike --n 2000 --size 1024 --seed 0
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common.cli import ROOT, main

log = logging.getLogger(__name__)
SOURCE = ROOT.parent / "shared/data/nih"
COLUMNS = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID"]


def generate(src: Path, out: Path, n: int, size: int, seed: int) -> None:
    """Writes ``n`` NIH-like images of ``size`` px and their ``Data_Entry_2017.csv`` under ``out`` (seeded: the same
    arguments give the same files). Each source image is decoded and resized once."""
    with open(src / "Data_Entry_2017.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if (src / "images" / r["Image Index"]).is_file()]
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    sources: dict[int, Image.Image] = {}
    entries = []
    for i in range(n):
        k = int(rng.integers(len(rows)))
        row = rows[k]
        if k not in sources:
            sources[k] = Image.open(src / "images" / row["Image Index"]).convert("L").resize((size, size))
        img = sources[k].rotate(float(rng.uniform(-5, 5)), translate=tuple(int(v) for v in rng.integers(-20, 21, 2)))
        arr = np.clip(np.asarray(img, dtype=np.float32) * rng.uniform(0.85, 1.15), 0, 255).astype(np.uint8)
        if rng.random() < 0.5:
            arr = arr[:, ::-1]
        patient = 100000 + i // 3
        name = f"{patient:08d}_{i % 3:03d}.png"
        Image.fromarray(np.ascontiguousarray(arr)).save(out / "images" / name)
        entries.append([name, row["Finding Labels"], i % 3, patient])
    with open(out / "Data_Entry_2017.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        writer.writerows(entries)
    log.info("Wrote %d images of %d px to %s", n, size, out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The generator's options: the source set, the destination folder, the count and the size."""
    parser.add_argument("--src", default=str(SOURCE))
    parser.add_argument("--dest", required=True, help="the folder to write images/ and Data_Entry_2017.csv into")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--size", type=int, default=1024)


def run(args: argparse.Namespace) -> dict:
    """Generates the set; the record names it."""
    generate(Path(args.src), Path(args.dest), args.n, args.size, args.seed)
    return {"dest": args.dest, "n": args.n, "size": args.size, "seed": args.seed}


if __name__ == "__main__":
    main("nih_like", __doc__, add_arguments, run)
