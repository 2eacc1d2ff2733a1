"""Generates an NIH-like data set (``images/*.png`` + ``Data_Entry_2017.csv``) of full-size radiographs for timing
the setup scan (issue #27): each image is a real NIH image of ``../shared/data/nih`` resized to ``--size`` px with a
seeded small rotation, shift, gain and flip, so every file has distinct bytes.

    python bench/nih_like.py --out /tmp/nihlike --n 2000 --size 1024 --seed 0
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)
COLUMNS = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default=str(Path(__file__).resolve().parents[2] / "shared/data/nih"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    src = Path(args.src)
    with open(src / "Data_Entry_2017.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if (src / "images" / r["Image Index"]).is_file()]
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(args.n):
        row = rows[int(rng.integers(len(rows)))]
        img = Image.open(src / "images" / row["Image Index"]).convert("L").resize((args.size, args.size))
        img = img.rotate(float(rng.uniform(-5, 5)), translate=tuple(int(v) for v in rng.integers(-20, 21, 2)))
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
    log.info("Wrote %d images of %d px to %s", args.n, args.size, out)


if __name__ == "__main__":
    main()
