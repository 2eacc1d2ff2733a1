"""Linear probe: how well do a backbone's frozen pretrained features separate a data set's classes?

For each model: one pass of the evaluation pipeline over every image (no augmentation, the model's
own preprocessing), pooled backbone features, then a logistic regression per cross-validation fold
(lungnet's stratified, patient-grouped folds for data.split_seed; features standardised on the fold's
training images), scored on the fold's validation images and pooled out of fold. Cheap (forward
passes only), so it ranks backbones before paying for fine-tuning; it does not predict fine-tuning
accuracy exactly.

Example:
    python -m bench.studies.linear_probe --data darkcovidnet --data-root ../shared/data/darkcovidnet \
        --models efficientnet_lite0,efficientnet_lite1,efficientnet_lite2 --image-size 224 \
        --out bench/results/linear_probe_darkcovidnet.json
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from sklearn.linear_model import LogisticRegression

from bench.common.cli import ROOT, main
from lungnet.data.datamodule import LungDataModule
from lungnet.data.splits import kfold
from lungnet.models.registry import create_model
from lungnet.scoring import stats

log = logging.getLogger("bench.linear_probe")
CONF = ROOT / "conf"


def _config(model: str, data: str, root: str, image_size: int | None) -> dict:
    overrides = [f"model={model}", f"data={data}", f"data.root={root}", "data.num_workers=0"]
    if image_size:
        overrides.append(f"data.image_size={image_size}")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


@torch.no_grad()
def features(model: str, data: str, root: str, image_size: int | None) -> tuple[np.ndarray, object, LungDataModule]:
    """Pooled backbone features of every image, with the image table and the DataModule (its labels, split seed)."""
    cfg = _config(model, data, root, image_size)
    opts = {k: v for k, v in cfg["model"].items() if k != "pretrained"}
    net = create_model(num_classes=2, **opts).eval()
    dm = LungDataModule(cfg["data"], net.spec, seed=int(cfg["seed"]))
    table = dm.load_table()
    dataset = dm.make_dataset(table, train=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, num_workers=0)
    out = [net.backbone(batch["image"]).numpy() for batch in loader]
    return np.concatenate(out), table, dm


def probe(feats: np.ndarray, y: np.ndarray, table, folds: int, seed: int, c: float) -> np.ndarray:
    """Out-of-fold class probabilities of a logistic regression on ``feats``."""
    probs = np.zeros((len(y), int(y.max()) + 1))
    for fold in range(folds):
        val = kfold(table, folds, fold, seed)
        mean, std = feats[~val].mean(0), feats[~val].std(0) + 1e-6
        clf = LogisticRegression(C=c, max_iter=5000).fit((feats[~val] - mean) / std, y[~val])
        probs[val] = clf.predict_proba((feats[val] - mean) / std)
    return probs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The data set, the backbones, the input size and the probe's folds and strength."""
    parser.add_argument("--data", required=True, help="data config name, e.g. darkcovidnet")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--models", default="efficientnet_lite0", help="comma-separated model config names")
    parser.add_argument("--image-size", type=int, default=None, help="default: each model's own input size")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--C", type=float, default=0.1, help="inverse L2 strength of the logistic regression")


def run(args: argparse.Namespace) -> dict:
    """Features, probe and pooled out-of-fold scores per model."""
    torch.manual_seed(args.seed)
    results = {}
    for model in args.models.split(","):
        start = time.perf_counter()
        feats, table, dm = features(model, args.data, args.data_root, args.image_size)
        seconds = time.perf_counter() - start
        y = table["label"].map({name: i for i, name in enumerate(dm.labels)}).to_numpy()
        probs = probe(feats, y, table, args.folds, int(dm.cfg["split_seed"]), args.C)
        summary = stats.bootstrap_ci(probs, y, dm.labels, multilabel=False, resamples=1000, seed=0)
        results[model] = {
            "image_size": dm.image_size,
            "images": len(y),
            "feature_width": int(feats.shape[1]),
            "feature_seconds": round(seconds, 1),
            **{k: summary[k] for k in ("accuracy", "auroc_macro")},
        }
        log.info("%s at %d px: %s", model, dm.image_size, results[model])
    print(f"\nLinear probe, {args.folds}-fold CV pooled out of fold, 95% bootstrap CIs:\n")
    print("| model | px | accuracy | macro AUROC | feature pass (s) |\n|---|---|---|---|---|")
    for model, r in results.items():
        cells = [f"{r[m]['value']:.3f} [{r[m]['lo']:.3f}, {r[m]['hi']:.3f}]" for m in ("accuracy", "auroc_macro")]
        print(f"| {model} | {r['image_size']} | {cells[0]} | {cells[1]} | {r['feature_seconds']:.0f} |")
    return results


if __name__ == "__main__":
    main("linear_probe", __doc__, add_arguments, run)
