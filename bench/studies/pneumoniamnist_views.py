"""PneumoniaMNIST models on shifted views built without the test split: which recipe holds off its own val split?

PneumoniaMNIST's official val split is a random slice of the training distribution, and its test split is another
set with another class mix (234 NORMAL / 390 PNEUMONIA against val's 135 / 389), so val overstates. ``build`` makes
views a recipe can be scored on without touching the test split, each a ``<view>/{NORMAL,PNEUMONIA}/`` folder that
``python evaluate.py ckpt=... split=all data.root=<view>`` also reads:

- ``val``: the official val split (symlinks);
- ``val_prior``: val resampled to the test split's class mix (all 135 NORMAL, 225 of 389 PNEUMONIA, seeded);
- ``kermany16``: the 16 full-resolution Kermany validation images, reduced as MedMNIST v2 made PneumoniaMNIST
  (centre crop to the short side, resize to 28 x 28; area interpolation);
- ``darkcovidnet``: DarkCovidNet Pneumonia vs No_findings (adult NIH images), reduced the same way;
- ``nih``: the NIH sample's Pneumonia (any image listing it) vs No Finding, reduced the same way (most of its
  256 px images are also in DarkCovidNet; its 64 px No Finding images are not);
- ``val_acq``: every val image under one seeded random acquisition change a reader would still accept (gamma
  0.7-1.4, contrast 0.75-1.25, blur sigma 0-0.8 px, a centre crop of 85-100 % per axis resized back to 28 px).
  It overlaps with ``augment=acquisition``, so it favours models trained with it: a check, not a judge;
- ``val_proc``: every val image under one or two seeded post-processing changes no training augmentation makes
  (unsharp masking, partial histogram equalisation, black collimation bands at one or two edges): a held-out
  family of changes, as corruption benchmarks keep test corruptions apart from training augmentations.

``score`` runs checkpoints (and probability-averaged ensembles of them) over every view and writes a table with
95 % bootstrap intervals (`lungnet.scoring.stats.bootstrap_ci`): accuracy and AUROC, NORMAL and PNEUMONIA recall,
at the arg-max and, with ``--prior``, after moving each model's implied class prior (its training mix times its loss
weights) to the given NORMAL share (label-shift correction of the probabilities, Saerens et al. 2002).

    python -m bench.studies.pneumoniamnist_views build --dest outputs/views
    python -m bench.studies.pneumoniamnist_views score --views outputs/views \
        --model lite0=outputs/runs/a/checkpoints/best.ckpt --model r18=outputs/runs/b/checkpoints/last.ckpt \
        --ensemble lite0+r18 --prior 0.375 --out outputs/views.json   # and the markdown table in views.md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench.common.cli import ROOT, main  # noqa: E402
from lungnet.artifacts.checkpoint import load_model  # noqa: E402
from lungnet.data.images import read_image  # noqa: E402
from lungnet.data.preprocessing import Preprocessing  # noqa: E402
from lungnet.scoring.stats import bootstrap_ci, threshold_metrics  # noqa: E402

log = logging.getLogger("bench.views")
SHARED = Path(os.environ.get("LUNGNET_SHARED_DATA", ROOT.parent / "shared" / "data"))
LABELS = ["NORMAL", "PNEUMONIA"]
VIEWS = ("val", "val_prior", "val_acq", "val_proc", "kermany16", "darkcovidnet", "nih")
TEST_NORMAL_SHARE = 234 / 624


# ----------------------------------------------------------------------------- build
def medmnist_reduce(image: np.ndarray, size: int = 28) -> np.ndarray:
    """Centre crop to the short side, then resize to ``size`` (area interpolation), as uint8.

    MedMNIST v2 (Yang et al. 2023, Sci Data 10:41): PneumoniaMNIST's source images were centre-cropped with a
    window the length of the short edge and resized to 1 x 28 x 28.
    """
    h, w = image.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = image[top : top + side, left : left + side]
    small = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    return np.clip(np.rint(small * 255.0), 0, 255).astype(np.uint8)


def _link_view(out: Path, files: dict[str, list[Path]]) -> None:
    for label, paths in files.items():
        folder = out / label
        folder.mkdir(parents=True, exist_ok=True)
        for p in paths:
            (folder / p.name).symlink_to(p.resolve())


def _reduced_view(out: Path, files: dict[str, list[Path]]) -> None:
    for label, paths in files.items():
        folder = out / label
        folder.mkdir(parents=True, exist_ok=True)
        for p in paths:
            Image.fromarray(medmnist_reduce(read_image(p))).save(folder / f"{p.stem}.png")


def _changed_view(out: Path, files: dict[str, list[Path]], change, rng: np.random.Generator) -> None:
    for label, paths in files.items():
        folder = out / label
        folder.mkdir(parents=True, exist_ok=True)
        for p in paths:
            Image.fromarray(change(read_image(p), rng)).save(folder / p.name)


def nih_files(root: Path) -> dict[str, list[Path]]:
    """NIH sample images labelled No Finding (NORMAL) or listing Pneumonia (PNEUMONIA)."""
    entries = pd.read_csv(root / "Data_Entry_2017.csv")
    present = set(os.listdir(root / "images"))
    entries = entries[entries["Image Index"].isin(present)]
    findings = entries["Finding Labels"].astype(str)
    pick = {
        "NORMAL": entries.loc[findings == "No Finding", "Image Index"],
        "PNEUMONIA": entries.loc[findings.str.split("|").apply(lambda f: "Pneumonia" in f), "Image Index"],
    }
    return {label: sorted(root / "images" / n for n in names) for label, names in pick.items()}


def acquisition_change(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random, mild acquisition change of a float [0, 1] image: crop-zoom, gamma, contrast, blur."""
    h, w = image.shape
    ch, cw = (max(8, round(s * rng.uniform(0.85, 1.0))) for s in (h, w))
    top, left = (h - ch) // 2, (w - cw) // 2
    x = cv2.resize(image[top : top + ch, left : left + cw], (w, h), interpolation=cv2.INTER_LINEAR)
    x = np.clip(x, 0, 1) ** rng.uniform(0.7, 1.4)
    x = np.clip((x - x.mean()) * rng.uniform(0.75, 1.25) + x.mean(), 0, 1)
    sigma = rng.uniform(0.0, 0.8)
    if sigma > 0.2:
        x = cv2.GaussianBlur(x, (0, 0), sigma)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def processing_change(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One or two random post-processing changes of a float [0, 1] image: sharpening, equalisation, collimation."""
    x = np.clip(image, 0, 1).astype(np.float32)
    for kind in rng.choice(3, size=rng.integers(1, 3), replace=False):
        if kind == 0:  # unsharp mask
            x = np.clip(x + rng.uniform(0.5, 1.5) * (x - cv2.GaussianBlur(x, (0, 0), 1.0)), 0, 1)
        elif kind == 1:  # partial histogram equalisation
            eq = cv2.equalizeHist(np.rint(x * 255).astype(np.uint8)).astype(np.float32) / 255.0
            a = rng.uniform(0.3, 0.7)
            x = (1 - a) * x + a * eq
        else:  # black collimation bands at one or two edges
            h, w = x.shape
            for edge in rng.choice(4, size=rng.integers(1, 3), replace=False):
                k = int(rng.integers(1, 4))
                if edge == 0:
                    x[:k] = 0
                elif edge == 1:
                    x[-k:] = 0
                elif edge == 2:
                    x[:, :k] = 0
                else:
                    x[:, -k:] = 0
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def build(out: Path, shared: Path, seed: int = 0) -> dict[str, dict[str, int]]:
    """Writes the views under ``out`` that are not there yet and returns the class counts per view."""
    mnist = shared / "pneumoniamnist" / "val"
    val = {label: sorted((mnist / label).glob("*.png")) for label in LABELS}
    rng = np.random.default_rng(seed)
    n_pneu = round(len(val["NORMAL"]) * (1 - TEST_NORMAL_SHARE) / TEST_NORMAL_SHARE)
    keep = sorted(rng.choice(len(val["PNEUMONIA"]), n_pneu, replace=False))
    dark = shared / "darkcovidnet"
    makers = {
        "val": lambda d: _link_view(d, val),
        "val_prior": lambda d: _link_view(
            d, {"NORMAL": val["NORMAL"], "PNEUMONIA": [val["PNEUMONIA"][i] for i in keep]}
        ),
        "val_acq": lambda d: _changed_view(d, val, acquisition_change, np.random.default_rng(seed + 1)),
        "val_proc": lambda d: _changed_view(d, val, processing_change, np.random.default_rng(seed + 2)),
        "kermany16": lambda d: _reduced_view(
            d, {label: sorted((shared / "kermany_val16" / label).glob("*.jpeg")) for label in LABELS}
        ),
        "darkcovidnet": lambda d: _reduced_view(
            d, {"NORMAL": sorted((dark / "No_findings").iterdir()), "PNEUMONIA": sorted((dark / "Pneumonia").iterdir())}
        ),
        "nih": lambda d: _reduced_view(d, nih_files(shared / "nih")),
    }
    for view, make in makers.items():
        if (out / view).exists():
            log.info("%s exists: kept", out / view)
        else:
            make(out / view)
    counts = {v: {label: len(list((out / v / label).iterdir())) for label in LABELS} for v in VIEWS}
    (out / "views.json").write_text(json.dumps({"seed": seed, "counts": counts}, indent=2))
    return counts


# ----------------------------------------------------------------------------- score
def view_images(folder: Path) -> tuple[list[Path], np.ndarray]:
    """Files and class indices of one view."""
    paths, targets = [], []
    for j, label in enumerate(LABELS):
        files = sorted((folder / label).iterdir())
        paths += files
        targets += [j] * len(files)
    return paths, np.asarray(targets)


@torch.no_grad()
def predict(ckpt: Path, paths: list[Path], batch: int = 128) -> np.ndarray:
    """Softmax probabilities (N, 2) of a checkpoint over image files, with its own evaluation preprocessing."""
    loaded = load_model(ckpt)
    if list(loaded.labels) != LABELS:
        raise SystemExit(f"{ckpt}: labels {loaded.labels}, expected {LABELS}")
    pipe = Preprocessing.from_loaded(loaded).pipeline()
    out = []
    for i in range(0, len(paths), batch):
        x = torch.stack([pipe(read_image(p)) for p in paths[i : i + batch]])
        out.append(torch.softmax(loaded.model(x).float(), dim=1).numpy())
    return np.concatenate(out)


def implied_prior(ckpt: Path) -> np.ndarray:
    """The class prior a checkpoint's training implied: its training class counts times its loss weights."""
    hp = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]
    root = Path(hp["data"]["root"]) / "train"
    counts = np.asarray([len(list((root / label).iterdir())) for label in LABELS], dtype=np.float64)
    weights = np.asarray(hp.get("class_weights") or [1.0, 1.0], dtype=np.float64)
    prior = counts * weights
    return prior / prior.sum()


def shift_prior(probs: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Label-shift correction: p'(c|x) proportional to p(c|x) * target_c / source_c."""
    p = probs * (target / source)
    return p / p.sum(axis=1, keepdims=True)


def cached_predict(ckpt: Path, view: Path, paths: list[Path], cache: Path) -> np.ndarray:
    """`predict`, cached on disk by checkpoint (path, size, mtime) and view."""
    st = ckpt.stat()
    key = hashlib.sha1(f"{ckpt.resolve()}|{st.st_size}|{st.st_mtime_ns}|{view.resolve()}".encode()).hexdigest()[:16]
    file = cache / f"{key}.npy"
    if file.is_file():
        return np.load(file)
    probs = predict(ckpt, paths)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(file, probs)
    return probs


def scores(probs: np.ndarray, targets: np.ndarray, resamples: int) -> dict:
    """Accuracy and AUROC with bootstrap intervals, and recall per class."""
    ci = bootstrap_ci(probs, targets, LABELS, False, resamples=resamples)
    recall = threshold_metrics(probs, targets, False)["recall"]
    return {
        "accuracy": ci["accuracy"],
        "auroc": ci["auroc_macro"],
        "recall_normal": float(recall[0]),
        "recall_pneumonia": float(recall[1]),
    }


def score(args) -> dict:
    """Every model and ensemble on every view; returns {row name: {view: scores}}."""
    models = dict(m.split("=", 1) for m in args.model)
    views = [v for v in VIEWS if (args.views / v).is_dir()]
    target_prior = np.asarray([args.prior, 1 - args.prior]) if args.prior else None
    priors = {name: implied_prior(Path(path)) for name, path in models.items()}
    results: dict[str, dict] = {}
    for view in views:
        paths, targets = view_images(args.views / view)
        probs = {name: cached_predict(Path(p), args.views / view, paths, args.cache) for name, p in models.items()}
        shifted = {n: shift_prior(p, priors[n], target_prior) for n, p in probs.items()} if args.prior else {}
        for ens in args.ensemble:
            members = ens.split("+")
            probs[ens] = np.mean([probs[m] for m in members], axis=0)
            if args.prior:
                shifted[ens] = np.mean([shifted[m] for m in members], axis=0)
        for name, p in probs.items():
            results.setdefault(name, {})[view] = scores(p, targets, args.resamples)
        for name, p in shifted.items():
            results.setdefault(f"{name} @prior {args.prior:.3f}", {})[view] = scores(p, targets, args.resamples)
    return results


def _ci(c: dict) -> str:
    return f"{c['value']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}]"


def markdown(results: dict, views: list[str], counts: dict) -> str:
    """Two tables (accuracy, AUROC with CIs) and one of recalls, candidates as rows, views as columns."""
    head = [f"{v} ({counts[v]['NORMAL']} N / {counts[v]['PNEUMONIA']} P)" for v in views]
    lines = []
    for metric, title in (("accuracy", "Accuracy"), ("auroc", "AUROC")):
        lines += [f"{title} [95% CI]:", "", "| candidate | " + " | ".join(head) + " |", "|---" * (len(views) + 1) + "|"]
        for name, per_view in results.items():
            cells = [_ci(per_view[v][metric]) if v in per_view else "" for v in views]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "Recall NORMAL / PNEUMONIA:",
        "",
        "| candidate | " + " | ".join(views) + " |",
        "|---" * (len(views) + 1) + "|",
    ]
    for name, per_view in results.items():
        cells = [f"{per_view[v]['recall_normal']:.3f} / {per_view[v]['recall_pneumonia']:.3f}" for v in views]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``build`` (write the views: --dest, --shared) or ``score`` (checkpoints on every view: the rest)."""
    p.add_argument("cmd", choices=["build", "score"], help="build: write the views; score: score checkpoints on them")
    p.add_argument("--dest", type=Path, default=ROOT / "outputs" / "views", help="build: the views' folder")
    p.add_argument("--shared", type=Path, default=SHARED, help="build: the shared data folder")
    p.add_argument("--views", type=Path, default=ROOT / "outputs" / "views", help="score: the views' folder")
    p.add_argument("--model", action="append", default=[], help="score: name=path/to.ckpt (repeat)")
    p.add_argument("--ensemble", action="append", default=[], help="name1+name2[+...]: average their probabilities")
    p.add_argument("--prior", type=float, default=0.0, help="also score with the NORMAL share moved to this")
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--cache", type=Path, default=ROOT / "outputs" / "views_cache")


def run(args: argparse.Namespace) -> dict:
    """Builds the views (the record: their counts) or scores the checkpoints (the record: the results; the markdown
    table is printed and written beside ``--out`` as .md)."""
    if args.cmd == "build":
        built = build(args.dest, args.shared, args.seed)
        print(json.dumps(built, indent=2))
        return built
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    results = score(args)
    counts = json.loads((args.views / "views.json").read_text())["counts"]
    views = [v for v in VIEWS if any(v in r for r in results.values())]
    text = markdown(results, views, counts)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    return {"views": str(args.views), "results": results}


if __name__ == "__main__":
    main("pneumoniamnist_views", __doc__, add_arguments, run)
