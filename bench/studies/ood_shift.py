"""The OOD gate against a population shift: which part of it misses adult films, and what catches them.

    python -m bench.studies.ood_shift <ckpt> --data ../shared/data [--repeats 200] [--train-max 0]

For a PneumoniaMNIST checkpoint (paediatric 28 px films) and its own split files (``<run>/splits/*.csv``), through
the shipped pipeline (`lungnet.serve.inference.Predictor`, decision=none: the gate is fitted here as ``evaluate.py
split=val`` fits it, on train, thresholded on val), cached under ``outputs/ood_shift_cache``:

1. **Per image**: the flag rate of each part of the shipped gate (`lungnet.scoring.ood.ImageGate`: features,
   thumbnail) and of candidate scores (kNN distance in feature and thumbnail space, a raw thumbnail that keeps
   exposure), each thresholded on val (a single score at the 0.95 quantile; the shipped gate's parts at 0.975 each),
   on: val cross-fitted (threshold on one half, rate on the other; 50 halvings: the exchangeable rate), DarkCovidNet's
   NIH-sourced adult films (No_findings + Pneumonia) and its COVID-19 films, the NIH sample's adults (age >= 18),
   and the 16 full-size Kermany validation films (a resolution shift of the training population). With labels
   (Pneumonia vs no finding): the model's AUROC on the films each score passes.
2. **Per batch**: `lungnet.scoring.shift.batch_shift` (KS per gate part + binomial flag count, Bonferroni, p < 0.01) on
   ``--repeats`` random batches of 8, 16, 32 and 64 images of each set: the share of batches said to be shifted.
   Exchangeable batches: the gate thresholded on one random half of val, batches drawn from the other half.

Writes the two markdown tables to stdout; progress to stderr. Results: docs/ood_population_shift.md.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from bench.common.cli import main
from lungnet.artifacts.decision import sha256_file
from lungnet.data.images import read_image
from lungnet.scoring.gate_inputs import layout
from lungnet.scoring.ood import ImageGate, OodGate
from lungnet.scoring.shift import batch_shift
from lungnet.serve.inference import Predictor

log = logging.getLogger("bench")
CACHE = Path("outputs/ood_shift_cache")
SIZES = (8, 16, 32, 64)
K = 10  # neighbours of the kNN scores
VIEWS = {"rotated 90 degrees": np.rot90, "rotated 180 degrees": lambda im: np.rot90(im, 2), "upside down": np.flipud}
POSITIVE = 1  # PNEUMONIA, the second of PneumoniaMNIST's labels (checked in main)


def gate_inputs(pred: Predictor, files: list[str], view: str = "") -> dict[str, np.ndarray]:
    """Logits and gate inputs (pooled features, then the input thumbnail) of image files (``view``: turned as
    `VIEWS` says), cached."""
    digest = hashlib.sha256((sha256_file(pred.path) + view + "\n".join(files)).encode()).hexdigest()[:16]
    path = CACHE / f"{digest}.npz"
    if path.is_file():
        return dict(np.load(path))
    logits, inputs = [], []
    turn = VIEWS.get(view, lambda im: im)
    for start in range(0, len(files), 64):
        batch = torch.stack(
            [pred.preprocess(np.ascontiguousarray(turn(read_image(f)))) for f in files[start : start + 64]]
        )
        z, x = pred.outputs(batch)
        logits.append(z)
        inputs.append(x)
    out = {"logits": np.concatenate(logits), "inputs": np.concatenate(inputs)}
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    log.info("%d images scored", len(files))
    return out


def sets(ckpt: Path, data: Path, labels: list[str], train_max: int) -> dict[str, tuple[list[str], np.ndarray]]:
    """``{name: (files, targets)}``: train and val of the run, and the other sets (target 1: pneumonia, 0: no
    finding, -1: neither)."""
    run = ckpt.resolve().parent.parent / "splits"
    out = {}
    for split in ("train", "val"):
        table = pd.read_csv(run / f"{split}.csv")
        if split == "train" and train_max and len(table) > train_max:
            table = table.sample(n=train_max, random_state=0)
        out[split] = (table["path"].tolist(), np.array([labels.index(x) for x in table["label"]]))
    dcn = data / "darkcovidnet"
    adult = sorted(dcn.glob("No_findings/*")) + sorted(dcn.glob("Pneumonia/*"))
    out["DarkCovidNet No_findings + Pneumonia"] = (
        [str(p) for p in adult],
        np.array([p.parent.name == "Pneumonia" for p in adult], int),
    )
    covid = sorted(dcn.glob("Covid-19/*"))
    out["DarkCovidNet Covid-19"] = ([str(p) for p in covid], np.full(len(covid), -1))
    nih = pd.read_csv(data / "nih" / "Data_Entry_2017.csv")
    nih = nih[(nih["Patient Age"] >= 18) & nih["Image Index"].map(lambda f: (data / "nih/images" / f).is_file())]
    target = np.where(
        nih["Finding Labels"].str.contains("Pneumonia"), 1, np.where(nih["Finding Labels"] == "No Finding", 0, -1)
    )
    out["NIH sample, age >= 18"] = ([str(data / "nih/images" / f) for f in nih["Image Index"]], target)
    kermany = sorted((data / "kermany_val16").rglob("*.jpeg"))
    out["Kermany val16, full size"] = (
        [str(p) for p in kermany],
        np.array([p.parent.name == "PNEUMONIA" for p in kermany], int),
    )
    return out


# ------------------------------------------------------------------ per-image scores: fit(train) -> score(inputs)
def knn(train: np.ndarray, k: int = K):
    """Distance to the k-th nearest training point of L2-normalised vectors (Sun et al., ICML 2022)."""
    ref = torch.nn.functional.normalize(torch.as_tensor(train, dtype=torch.float32), dim=1)

    def score(x: np.ndarray) -> np.ndarray:
        q = torch.nn.functional.normalize(torch.as_tensor(x, dtype=torch.float32), dim=1)
        return torch.cdist(q, ref).topk(k, largest=False).values[:, -1].numpy()

    return score


def candidates(train: dict, classes: np.ndarray) -> dict[str, callable]:
    """Score functions over gate inputs, fitted on train: the shipped gate's two parts and the candidates."""
    gate = ImageGate.fit(train["inputs"], classes)
    width = gate.features.means.shape[1]
    raw = OodGate.fit(train["inputs"][:, width:], classes, dims=16)
    feat_knn, thumb_knn = knn(train["inputs"][:, :width]), knn(layout(train["inputs"][:, width:]))
    return {
        "features (Mahalanobis, shipped part)": lambda x: gate.features.score(x[:, :width]),
        "thumbnail (layout, shipped part)": lambda x: gate.image.score(layout(x[:, width:])),
        f"kNN features (k={K})": lambda x: feat_knn(x[:, :width]),
        f"kNN thumbnail (k={K})": lambda x: thumb_knn(layout(x[:, width:])),
        "raw thumbnail (exposure kept, 16 axes)": lambda x: raw.score(x[:, width:]),
    }, gate


def combos(names: list[str]) -> dict[str, tuple[str, ...]]:
    """The gates compared: each score alone, the shipped gate (features or layout thumbnail) and the shipped gate
    with the raw thumbnail as a third part; a gate of k parts flags when any part is above its 1 - 0.05 / k
    quantile of val."""
    return {
        **{n: (n,) for n in names},
        "shipped gate (either part)": (names[0], names[1]),
        "shipped + raw thumbnail (any of 3)": (names[0], names[1], names[4]),
    }


def flags_of(parts: tuple[str, ...], s: dict, val: dict) -> np.ndarray:
    """Flagged by any of ``parts``, each at the ``1 - 0.05 / len(parts)`` quantile of ``val``'s scores."""
    q = 1 - 0.05 / len(parts)
    return np.any([s[n] > np.quantile(val[n], q) for n in parts], 0)


def per_image(scores: dict, data: dict) -> list[str]:
    """Markdown rows: each gate's flag rate per set (`combos`; thresholds on val) and the model's AUROC on the
    films it passes."""
    cols = combos(list(scores))
    val = {n: scores[n](data["val"]["inputs"]) for n in scores}
    rng = np.random.default_rng(0)
    cross = {c: [] for c in cols}
    for _ in range(50):
        order = rng.permutation(len(data["val"]["inputs"]))
        a, b = order[: len(order) // 2], order[len(order) // 2 :]
        for c, parts in cols.items():
            cross[c].append(
                float(flags_of(parts, {n: v[b] for n, v in val.items()}, {n: v[a] for n, v in val.items()}).mean())
            )
    rows = ["| images | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    rows.append("| val, cross-fitted (50 halvings) | " + " | ".join(f"{np.mean(cross[c]):.3f}" for c in cols) + " |")
    for name, d in data.items():
        if name in ("train", "val"):
            continue
        s = {n: scores[n](d["inputs"]) for n in scores}
        flags = [flags_of(parts, s, val) for parts in cols.values()]
        cells = [f"{int(f.sum())}/{len(f)} = {f.mean():.2f}{auroc_passed(d, ~f)}" for f in flags]
        every = auroc_passed(d, np.ones(len(d["targets"]), bool))
        rows.append(f"| {name}{every.replace(' (AUROC', ' (all: AUROC')} | " + " | ".join(cells) + " |")
    return rows


def auroc_passed(d: dict, passed: np.ndarray) -> str:
    """`` (AUROC a of m passed)``: the model's AUROC (p(pneumonia)) on the passed labelled films, when both classes
    are there."""
    y = d["targets"]
    keep = passed & (y >= 0)
    if len(np.unique(y[keep])) < 2:
        return ""
    p = torch.softmax(torch.as_tensor(d["logits"][keep]), 1)[:, POSITIVE].numpy()
    return f" (AUROC {roc_auc_score(y[keep], p):.2f} of {int(keep.sum())})"


def per_batch(gate: ImageGate, data: dict, repeats: int) -> list[str]:
    """Markdown rows: the share of random batches `batch_shift` says are shifted, per set and batch size."""
    rng = np.random.default_rng(1)
    val = data["val"]["inputs"]
    rows = ["| images | " + " | ".join(f"n = {n}" for n in SIZES) + " |", "|---|" + "---|" * len(SIZES)]
    shifted = {n: [] for n in SIZES}
    for _ in range(repeats):  # exchangeable: gate thresholded on one half of val, batches from the other half
        order = rng.permutation(len(val))
        half = gate.calibrate(val[order[: len(val) // 2]])
        rest = val[order[len(val) // 2 :]]
        for n in SIZES:
            x = rest[rng.choice(len(rest), n, replace=False)]
            shifted[n].append(batch_shift(half, half.score(x), half.parts(x))["shifted"])
    rows.append("| val, other half (exchangeable) | " + " | ".join(f"{np.mean(shifted[n]):.3f}" for n in SIZES) + " |")
    for name, d in data.items():
        if name in ("train", "val"):
            continue
        x_all = d["inputs"]
        cells = []
        for n in SIZES:
            if n > len(x_all):
                cells.append("-")
                continue
            hits = [
                batch_shift(gate, gate.score(x), gate.parts(x))["shifted"]
                for x in (x_all[rng.choice(len(x_all), n, replace=False)] for _ in range(repeats))
            ]
            cells.append(f"{np.mean(hits):.3f}")
        every = auroc_passed(d, np.ones(len(d["targets"]), bool))
        rows.append(f"| {name}{every.replace(' (AUROC', ' (all: AUROC')} | " + " | ".join(cells) + " |")
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The study's options: the PneumoniaMNIST checkpoint, the shared data folder, batches and the train sample."""
    parser.add_argument("ckpt", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="the shared data folder (README.md there)")
    parser.add_argument("--repeats", type=int, default=200, help="random batches per set and size")
    parser.add_argument("--train-max", type=int, default=0, help="fit on a seeded sample of train (0: all)")


def run(args: argparse.Namespace) -> dict:
    """Per-image flag rates of each gate part and candidate, and per-batch shift-test rates (markdown tables)."""
    torch.set_grad_enabled(False)
    pred = Predictor(args.ckpt, decision="none")
    if pred.labels[POSITIVE] != "PNEUMONIA":
        raise SystemExit(f"{args.ckpt}: labels {pred.labels}, expected a PneumoniaMNIST model (NORMAL, PNEUMONIA)")
    data = {}
    sets_ = sets(args.ckpt, args.data, pred.labels, args.train_max)
    for name, (files, targets) in sets_.items():
        data[name] = {**gate_inputs(pred, files), "targets": targets}
    val_files, val_targets = sets_["val"]
    for view in VIEWS:  # must-flag: the val films turned
        data[f"val {view}"] = {**gate_inputs(pred, val_files, view), "targets": np.full(len(val_files), -1)}
    rng = np.random.default_rng(args.seed)
    blank = [np.full((256, 256), v, np.float32) for v in (0.5, 0.0, 1.0)]
    noise = [rng.random((256, 256), dtype=np.float32) for _ in range(20)]
    for name, images in (("blank grey / black / white", blank), ("uniform noise", noise)):
        z, x = pred.outputs(torch.stack([pred.preprocess(im) for im in images]))
        data[name] = {"logits": z, "inputs": x, "targets": np.full(len(images), -1)}
    scores, gate = candidates(data["train"], data["train"]["targets"])
    gate = gate.calibrate(data["val"]["inputs"])
    image_rows, batch_rows = per_image(scores, data), per_batch(gate, data, args.repeats)
    log.info("Per image (%s; thresholds on val)\n\n%s", args.ckpt, "\n".join(image_rows))
    log.info(
        "Per batch: share of %d random batches with batch_shift p < 0.01\n\n%s", args.repeats, "\n".join(batch_rows)
    )
    return {"ckpt": str(args.ckpt), "per_image": image_rows, "per_batch": batch_rows}


if __name__ == "__main__":
    main("ood_shift", __doc__, add_arguments, run)
