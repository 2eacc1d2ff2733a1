"""Flag rates of a checkpoint's OOD gate (its ``<stem>.decision.json``) on inputs it must flag and must pass.

    python -m bench.studies.ood_rates <ckpt> <held-out folder|glob> [<other chest X-ray folder|glob> ...] \
        [--downsample 28]

Prints a markdown table: natural photographs (skimage.data astronaut, coffee, chelsea, rocket, camera), uniform
noise, blank grey, the held-out X-rays rotated by 90 and 180 degrees and flipped upside down, the held-out X-rays
themselves, and each other folder. Discussed in docs/decisions.md.
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data as skdata

from bench.common.cli import main
from lungnet.serve.inference import Predictor

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera")


def gray(img: np.ndarray) -> np.ndarray:
    """An skimage image as grayscale float in [0, 1]."""
    img = img.astype(np.float32) / 255.0
    return img[..., :3].mean(-1) if img.ndim == 3 else img


def files(spec: str) -> list[str]:
    """Image files of a folder (recursive) or a glob."""
    path = Path(spec)
    if path.is_dir():
        return sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    return sorted(glob.glob(spec, recursive=True))


def rate(pred: Predictor, images: list[np.ndarray]) -> tuple[int, int]:
    """(flagged, n) for decoded grayscale images."""
    flagged = 0
    for start in range(0, len(images), 64):
        batch = torch.stack([pred.preprocess(np.ascontiguousarray(im)) for im in images[start : start + 64]])
        flagged += int(pred.decision.ood.flag(pred.outputs(batch)[1])[1].sum())
    return flagged, len(images)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The checkpoint, its held-out images and other chest X-ray folders."""
    parser.add_argument("ckpt", help="a checkpoint with a decision file holding an OOD gate")
    parser.add_argument("held_out", help="folder or glob of held-out images of the training distribution")
    parser.add_argument("others", nargs="*", help="folders or globs of other chest X-rays")
    parser.add_argument(
        "--downsample", type=int, default=0, help="reduce held-out images to this side first (28: as MedMNIST did)"
    )


def run(args: argparse.Namespace) -> dict:
    """Flag rate per input family; the record holds the rows."""
    ckpt, held_out, others = args.ckpt, args.held_out, args.others
    pred = Predictor(ckpt)
    if pred.decision is None or pred.decision.ood is None:
        raise SystemExit(f"{ckpt} has no decision file with an OOD gate: run evaluate.py ckpt={ckpt} split=val")
    held = [pred.load(f)[0] for f in files(held_out)]
    side = args.downsample
    if side:
        held = [np.asarray(Image.fromarray(im).resize((side, side), Image.Resampling.BOX)) for im in held]
    rng = np.random.default_rng(args.seed)
    rows = [
        ("natural photographs (skimage.data)", [gray(getattr(skdata, n)()) for n in PHOTOS]),
        ("uniform noise", [rng.random((256, 256), dtype=np.float32) for _ in range(20)]),
        ("blank grey / black / white", [np.full((256, 256), v, np.float32) for v in (0.5, 0.0, 1.0)]),
        ("held-out X-rays rotated 90 degrees", [np.rot90(im) for im in held]),
        ("held-out X-rays rotated 180 degrees", [np.rot90(im, 2) for im in held]),
        ("held-out X-rays upside down", [im[::-1] for im in held]),
        (f"held-out X-rays ({held_out})", held),
    ]
    rows += [(f"other chest X-rays ({o})", [pred.load(f)[0] for f in files(o)]) for o in others]
    print(f"OOD gate of {ckpt}: threshold {pred.decision.ood.threshold:.3g} ({pred.decision.ood.info})\n")
    print("| inputs | flagged | n | rate |\n|---|---|---|---|")
    out = []
    for name, images in rows:
        k, n = rate(pred, images)
        print(f"| {name} | {k} | {n} | {k / max(n, 1):.3f} |")
        out.append({"inputs": name, "flagged": k, "n": n})
    return {"ckpt": ckpt, "threshold": float(pred.decision.ood.threshold), "rows": out}


if __name__ == "__main__":
    main("ood_rates", __doc__, add_arguments, run)
