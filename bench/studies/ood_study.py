"""How a checkpoint's OOD gate behaves, and how variants of it would: flag rates on inputs it must flag and must pass.

    python -m bench.studies.ood_study <ckpt> [--other DIR ...] [--reduced DIR ...] [--medmnist DIR ...] [--variants]

Features come from the checkpoint's own split files (``<run>/splits/{train,val,test}.csv``) through the
evaluation pipeline (`lungnet.serve.inference.Predictor`), cached under ``outputs/ood_cache``. The gate is fitted on the
train split and thresholded at the 0.95 quantile of val, as ``evaluate.py split=val`` does. Rows:

- *val, cross-fitted*: the threshold set on a random half of val, the rate on the other half (mean over 50 random
  halvings): the in-distribution flag rate on images neither fitted nor thresholded on (validation data only);
- *test*: the held-out test split when the run has one (exchangeable with val);
- must-flag inputs: natural photographs (skimage.data), uniform noise, blank images, and the held-out images
  (test, else val) rotated by 90 and 180 degrees and upside down;
- ``--other DIR``: another chest X-ray set, as the Predictor reads it; ``--reduced DIR``: full-resolution images
  reduced to 28 px whole (no crop); ``--medmnist DIR``: full-resolution images prepared as MedMNIST v2 prepared
  PneumoniaMNIST (centre square crop of the short side, reduced to 28 px).

The table is logged (stderr); progress lines too.

``--variants`` adds columns for other gates (PPCA axes, pooled vs per-class means, a Ledoit-Wolf full covariance,
the energy score of the logits, the pooled features alone as before the image part), each fitted and thresholded the
same way (a gate of two parts: each at the 0.975 quantile, flagged when either flags); ``--grid 2`` one on the
backbone's last feature map averaged into 2 x 2 cells (globally pooled features hardly change when a film is rotated).
Discussed in docs/decisions.md.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from scipy.special import logsumexp
from skimage import data as skdata
from skimage.transform import resize

from bench.common.cli import main
from bench.studies.ood_rates import PHOTOS, gray
from lungnet.artifacts.decision import sha256_file
from lungnet.data.images import read_image
from lungnet.scoring.gate_inputs import THUMB, layout
from lungnet.scoring.ood import ImageGate, OodGate
from lungnet.serve.inference import Predictor

log = logging.getLogger("ood_study")
CACHE = Path("outputs/ood_cache")
QUANTILE = 0.95


def medmnist_like(image: np.ndarray, side: int = 28) -> np.ndarray:
    """MedMNIST v2's PneumoniaMNIST preparation: centre square crop of the short side, reduced to ``side`` px
    (anti-aliased; the 16 Kermany validation images prepared so match their PneumoniaMNIST copies to ~3 grey levels
    of 255, `bench.studies.kermany_in_pneumoniamnist`)."""
    h, w = image.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return resize(image[top : top + s, left : left + s], (side, side), order=1, anti_aliasing=True)


def reduced(image: np.ndarray, side: int = 28) -> np.ndarray:
    """The whole image reduced to ``side`` px without cropping (box filter): not how MedMNIST prepared its images."""
    img = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))
    return np.asarray(img.resize((side, side), Image.Resampling.BOX), dtype=np.float32) / 255.0


def outputs(pred: Predictor, images: list[np.ndarray], grid: int = 0) -> dict[str, np.ndarray]:
    """Logits and pooled features of decoded grayscale images; with ``grid``, also the backbone's last feature map
    averaged into ``grid`` x ``grid`` cells and flattened (``grid``: keeps where in the image a feature is)."""
    out: dict[str, list] = {"logits": [], "features": [], "grid": []}
    for start in range(0, len(images), 64):
        batch = torch.stack([pred.preprocess(np.ascontiguousarray(im)) for im in images[start : start + 64]])
        if grid:  # one pass: the feature map, then the model's own pooling and head
            model = pred.torch_model
            fmap = model.backbone.forward_features(batch)
            f = model.backbone.forward_head(fmap, pre_logits=True)
            z = model.head(f).numpy()
            out["grid"].append(torch.nn.functional.adaptive_avg_pool2d(fmap, grid).flatten(1).numpy())
            f = f.numpy()
        else:
            z, f = pred.outputs(batch)
        out["logits"].append(z)
        out["features"].append(f)
    return {k: np.concatenate(v) for k, v in out.items() if v}


def cached(pred: Predictor, key: str, files: list[str], prepare: Callable | None = None, grid: int = 0) -> dict:
    """`outputs` of image files, cached by checkpoint hash, preparation, grid and file list."""
    key = f"{key}_grid{grid}" if grid else key
    key = f"{key}_thumb{THUMB}"  # features are gate inputs: pooled features, then the input thumbnail
    digest = hashlib.sha256((sha256_file(pred.path) + key + "\n".join(files)).encode()).hexdigest()[:16]
    path = CACHE / f"{key}_{digest}.npz"
    if path.is_file():
        return dict(np.load(path))
    images = [read_image(f) for f in files]
    if prepare is not None:
        images = [prepare(im) for im in images]
    result = outputs(pred, images, grid)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, **result)
    log.info("%s: %d images", key, len(files))
    return result


def split_files(ckpt: Path, labels: list[str]) -> dict[str, tuple[list[str], np.ndarray]]:
    """The run's split files: ``{split: (paths, class indices)}`` (single-label runs)."""
    out = {}
    for name in ("train", "val", "test"):
        csv = ckpt.resolve().parent.parent / "splits" / f"{name}.csv"
        table = pd.read_csv(csv) if csv.is_file() else pd.DataFrame()
        if len(table):
            out[name] = (table["path"].tolist(), np.array([labels.index(x) for x in table["label"]]))
    return out


def folder_files(folder: str) -> list[str]:
    """Image files (png, jpg, jpeg) below ``folder``, sorted."""
    return sorted(str(p) for p in Path(folder).rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})


# ---------------------------------------------------------------- gates: fit(train) -> score(features, logits)
def pooled(d: dict) -> np.ndarray:
    """The pooled features of the cached gate inputs (without the thumbnail)."""
    return d["features"][:, : -THUMB * THUMB]


def gate_ppca(dims: int, per_class: bool = True, key: str = "features"):
    def fit(train):
        x = (lambda d: pooled(d)) if key == "features" else (lambda d: d[key])  # noqa: E731
        gate = OodGate.fit(x(train), train["classes"] if per_class else None, dims=dims)
        return lambda d: gate.score(x(d))

    return fit


def gate_image(train):
    """The shipped gate (`lungnet.scoring.ood.ImageGate`): both part scores, (N, 2), thresholded each."""
    gate = ImageGate.fit(train["features"], train["classes"])
    width = gate.features.means.shape[1]

    def score(d):
        x = d["features"]
        return np.stack([gate.features.score(x[:, :width]), gate.image.score(layout(x[:, width:]))], 1)

    return score


def gate_ledoit_wolf(train):
    from sklearn.covariance import LedoitWolf

    x, y = pooled(train).astype(np.float64), train["classes"]
    means = np.stack([x[y == c].mean(0) for c in np.unique(y)])
    lw = LedoitWolf(assume_centered=True).fit(x - means[np.searchsorted(np.unique(y), y)])
    prec = lw.precision_

    def score(d):
        f = pooled(d).astype(np.float64)
        return np.min([(((f - m) @ prec) * (f - m)).sum(1) for m in means], axis=0) / f.shape[1]

    return score


def gate_energy(train):
    return lambda d: -logsumexp(d["logits"], axis=1)


VARIANTS = {
    "features + thumbnail (default)": gate_image,
    "ppca64 per-class, features alone": gate_ppca(64),
    "ppca16": gate_ppca(16),
    "ppca256": gate_ppca(256),
    "ppca64 pooled": gate_ppca(64, per_class=False),
    "Ledoit-Wolf full": gate_ledoit_wolf,
    "energy (logits)": gate_energy,
}
GRID_VARIANTS = {"ppca64 per-class, 2 x 2 grid": gate_ppca(64, key="grid")}


def thresholds(val_scores: np.ndarray) -> np.ndarray:
    """One threshold per score column (N,) or (N, k): each at the ``1 - (1 - QUANTILE) / k`` quantile of val."""
    cols = val_scores.reshape(len(val_scores), -1)
    return np.quantile(cols, 1 - (1 - QUANTILE) / cols.shape[1], axis=0)


def flagged(scores: np.ndarray, limits: np.ndarray) -> np.ndarray:
    """Flagged where any score column is above its threshold."""
    return (scores.reshape(len(scores), -1) > limits).any(1)


def cross_fit(val_scores: np.ndarray, repeats: int = 50) -> float:
    """Mean flag rate on one half of val when the thresholds are set on the other half."""
    rng = np.random.default_rng(0)
    rates = []
    for _ in range(repeats):
        order = rng.permutation(len(val_scores))
        a, b = val_scores[order[: len(order) // 2]], val_scores[order[len(order) // 2 :]]
        rates += [float(flagged(b, thresholds(a)).mean()), float(flagged(a, thresholds(b)).mean())]
    return float(np.mean(rates))


def views(pred: Predictor, held: list[str], args: argparse.Namespace) -> dict[str, dict]:
    """Must-flag and other inputs: ``{row name: outputs}``."""
    rng = np.random.default_rng(0)
    held_images = [read_image(f) for f in held]
    synthetic = {
        "natural photographs (skimage.data)": [gray(getattr(skdata, n)()) for n in PHOTOS],
        "uniform noise": [rng.random((256, 256), dtype=np.float32) for _ in range(20)],
        "blank grey / black / white": [np.full((256, 256), v, np.float32) for v in (0.5, 0.0, 1.0)],
        "held-out X-rays rotated 90 degrees": [np.rot90(im) for im in held_images],
        "held-out X-rays rotated 180 degrees": [np.rot90(im, 2) for im in held_images],
        "held-out X-rays upside down": [im[::-1] for im in held_images],
    }
    out = {}
    for name, images in synthetic.items():
        out[name] = outputs(pred, images, args.grid)
    preparations = (
        ("other", "{} (as the Predictor reads it)", args.other, None),
        ("reduced", "{}, whole image reduced to 28 px (no crop)", args.reduced, reduced),
        ("medmnist", "{}, prepared as MedMNIST (centre crop, 28 px)", args.medmnist, medmnist_like),
    )
    for key, row, folders, prepare in preparations:
        for folder in folders:
            out[row.format(folder)] = cached(pred, key, folder_files(folder), prepare, args.grid)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The checkpoint, other image folders and the gate variants to add."""
    parser.add_argument("ckpt", type=Path)
    parser.add_argument("--other", action="append", default=[], help="another chest X-ray folder")
    parser.add_argument("--medmnist", action="append", default=[], help="full-resolution folder, MedMNIST-prepared")
    parser.add_argument("--reduced", action="append", default=[], help="full-resolution folder, reduced to 28 px")
    parser.add_argument("--grid", type=int, default=0, help="also a gate on the last feature map pooled to N x N")
    parser.add_argument("--train-subset", type=int, default=0, help="fit the gates on this many training images")
    parser.add_argument("--variants", action="store_true", help="also other gate variants")


def run(args: argparse.Namespace) -> dict:
    """Flag rates of each gate variant on each row; the record holds the table."""
    torch.set_grad_enabled(False)
    pred = Predictor(args.ckpt, decision="none")
    splits = split_files(args.ckpt, pred.labels)
    if args.train_subset:  # a random part of train fits the gates (quicker; the threshold is still set on val)
        files, y = splits["train"]
        keep = np.sort(np.random.default_rng(0).permutation(len(files))[: args.train_subset])
        splits["train"] = ([files[i] for i in keep], y[keep])
    data = {name: {**cached(pred, name, files, grid=args.grid), "classes": y} for name, (files, y) in splits.items()}
    held = "test" if "test" in data else "val"
    rows = {f"{s} split (n={len(data[s]['classes'])})": data[s] for s in ("val", "test") if s in data}
    rows.update(views(pred, splits[held][0], args))
    chosen = VARIANTS if args.variants else {k: v for k, v in VARIANTS.items() if "default" in k}
    chosen = {**chosen, **(GRID_VARIANTS if args.grid else {})}
    table = {name: {} for name in ["val, cross-fitted (mean of 50 halvings)", *rows]}
    for vname, fit in chosen.items():
        score = fit(data["train"])
        val_scores = score(data["val"])
        limits = thresholds(val_scores)
        table["val, cross-fitted (mean of 50 halvings)"][vname] = f"{cross_fit(val_scores):.3f}"
        for name, d in rows.items():
            flags = flagged(score(d), limits)
            table[name][vname] = f"{int(flags.sum())}/{len(flags)} = {flags.mean():.3f}"
    lines = [
        f"OOD flag rates of {args.ckpt} (gates fitted on train, thresholds on val: {QUANTILE} quantile, or each of "
        f"two parts at {1 - (1 - QUANTILE) / 2})",
        "",
        "| inputs | " + " | ".join(chosen) + " |",
        "|---|" + "---|" * len(chosen),
    ]
    lines += [f"| {name} | " + " | ".join(cells[v] for v in chosen) + " |" for name, cells in table.items()]
    log.info("\n".join(lines))
    return {"ckpt": str(args.ckpt), "rates": table, "table": lines}


if __name__ == "__main__":
    main("ood_study", __doc__, add_arguments, run)
