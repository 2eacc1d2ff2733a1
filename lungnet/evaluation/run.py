"""``evaluate(cfg)``: a checkpoint alone (plus an optional data-root override) -> metrics and predictions."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from lungnet.checkpoint import LoadedModel, load_model
from lungnet.data.datamodule import LungDataModule
from lungnet.data.sources import DataError, LabelledFolderSource
from lungnet.evaluation.predict import predict_loader, predictions_table
from lungnet.io import write_csv, write_json
from lungnet.metrics import compute_metrics
from lungnet.training import resolve_root

log = logging.getLogger(__name__)


def data_config(loaded: LoadedModel, overrides: dict) -> dict:
    """The checkpoint's data config with the non-null overrides applied."""
    cfg = dict(loaded.data)
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return resolve_root(cfg)


def check_compatible(loaded: LoadedModel, dm: LungDataModule) -> None:
    """Refuses data whose labels differ from the checkpoint's (another dataset, or a changed list)."""
    if list(dm.labels) != list(loaded.labels) or dm.multilabel != loaded.multilabel:
        raise DataError(
            f"Checkpoint {loaded.path} was trained on labels {loaded.labels} but the data "
            f"'{dm.source.name}' at {dm.source.root} has labels {dm.labels}: use a matching dataset"
        )


def build_eval_data(loaded: LoadedModel, overrides: dict, split: str, run_dir: Path) -> LungDataModule:
    """The DataModule for evaluating ``loaded`` on ``split`` (``all``: every image, no split)."""
    cfg = data_config(loaded, overrides)
    seed = int(loaded.hparams.get("extra", {}).get("seed", 0))
    dm = LungDataModule(cfg, loaded.spec, seed=seed, run_dir=run_dir)
    if split == "all":
        if loaded.multilabel:
            raise DataError("split=all reads <root>/<class>/ folders, which cannot hold multi-label targets")
        dm.source = LabelledFolderSource(cfg["root"], loaded.labels)
        table = dm.load_table(all_images=True)
        dm.table = table
        dm.datasets["all"] = dm.make_dataset(table, train=False)
    else:
        check_compatible(loaded, dm)
        dm.setup("test")
    return dm


def evaluate(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Evaluates ``cfg.ckpt`` on ``cfg.split``; writes metrics.json and predictions.csv into ``run_dir``."""
    run_dir = Path(run_dir)
    loaded = load_model(cfg.ckpt)
    overrides = OmegaConf.to_container(cfg.data, resolve=True)
    dm = build_eval_data(loaded, overrides, str(cfg.split), run_dir)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    probs, targets, paths = predict_loader(
        loaded.model, dm.loader(str(cfg.split)), loaded.multilabel, device, desc=f"Evaluating {cfg.split}"
    )
    metrics = compute_metrics(probs, targets, loaded.labels, loaded.multilabel)
    result = {
        "checkpoint": str(Path(cfg.ckpt).resolve()),
        "split": str(cfg.split),
        "data_root": dm.source.root,
        "model": loaded.spec.name,
        "labels": loaded.labels,
        **metrics,
    }
    write_json(run_dir / "metrics.json", result)
    write_csv(
        run_dir / "predictions.csv",
        predictions_table(paths, probs, targets, loaded.labels, loaded.multilabel, loaded.thresholds),
    )
    headline = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
    log.info("%s on %s (%d images): %s", loaded.spec.name, cfg.split, metrics["n"], headline)
    log.info("Wrote %s and predictions.csv", run_dir / "metrics.json")
    return result
