"""``lungnet-explain`` / ``python -m lungnet.explain``: heatmaps of a checkpoint, and optionally their scores.

    python -m lungnet.explain ckpt=<path> [method=gradcam] [n=16] [class_index=<label|index>]
        [cam_layer=backbone.layer3] [images=test|val|train|<folder>|<file.csv>] [data.root=<folder>]
        [out=<folder>] [options.batch_size=...] [score=none|synthetic|nih] [methods=[gradcam,hirescam,...]]
        [score_n=<max lesions>] [sanity=true] [threads=<torch threads>]

The options are those of ``conf/explain.yaml``; ``method`` also takes its ``options`` from
``conf/explain/<method>.yaml`` (the command line's ``options.*`` go over them). ``images`` defaults to the
checkpoint's own test split. ``score=synthetic`` scores ``methods`` against the phantoms' lesion masks of that
split, ``score=nih`` against the radiologists' boxes of ``BBox_List_2017.csv`` under ``data.root``. Outputs go to
``out`` (the Hydra run directory, default ``outputs/explain/<date>/<time>``): overlays, grid, CSVs and
``explanations_<method>.md``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig

from lungnet.artifacts.checkpoint import LoadedModel, load_model
from lungnet.data.datamodule import LungDataModule
from lungnet.data.formats import walk_images
from lungnet.data.labels import match_label
from lungnet.data.multi import resolve_root
from lungnet.data.splits import ExpectedSplits
from lungnet.explain.base import ExplainError
from lungnet.explain.groundtruth import nih_box_cases, synthetic_cases
from lungnet.explain.pointing import score_checkpoint
from lungnet.explain.run import explain_checkpoint
from lungnet.io import write_text

log = logging.getLogger("lungnet.explain")

SCORES = ("none", "synthetic", "nih")


def _dataset(loaded: LoadedModel, split: str, root: str | None):
    cfg = dict(loaded.data)
    if root:
        cfg["root"] = root
    # heatmaps of changed splits are still heatmaps: a warning
    expected = ExpectedSplits.of(loaded.hparams, loaded.path, "explain", allow=True)
    dm = LungDataModule(resolve_root(cfg), loaded.spec, seed=loaded.seed, expected_splits=expected)
    dm.setup("test")
    if split not in dm.datasets:
        raise ExplainError(f"Split '{split}' is empty for {loaded.path}; use images=train|val|test|<folder>|<csv>")
    return dm.datasets[split], dm.source.root


def images_for(loaded: LoadedModel, images: str, root: str | None) -> tuple[object, str | None]:
    """The images to explain (a Dataset or a table) and the data root they come from."""
    if images in {"train", "val", "test"}:
        return _dataset(loaded, images, root)
    path = Path(images).expanduser()
    if path.is_dir():
        files = walk_images(path)
        labels = [match_label(p.parent.name, loaded.labels) for p in files]
        return pd.DataFrame({"path": [str(p) for p in files], "label": labels}), str(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return pd.read_csv(path), root
    raise FileNotFoundError(f"images={images}: not a split name (train|val|test), a folder or a .csv file")


def _score(cfg: DictConfig, loaded: LoadedModel, items, root: str | None, out: Path, method_options: dict) -> dict:
    """Scores each of ``method_options``' methods against the ground truth named by ``cfg.score``."""
    if cfg.score == "synthetic":
        cases = synthetic_cases(items, loaded.labels)
    else:
        cases = nih_box_cases(cfg.data.root or root or loaded.data.get("root"), loaded.labels)
    return score_checkpoint(
        loaded,
        cases,
        list(method_options),
        out,
        str(cfg.score),
        cfg.score_n,
        bool(cfg.sanity),
        cfg.cam_layer,
        method_options=method_options,
    )


def run(cfg: DictConfig, out: Path, options: dict, method_options: dict[str, dict]) -> dict:
    """Explains ``cfg.n`` images with ``cfg.method`` (and scores ``method_options``' methods); returns the summaries.

    Args:
        cfg: the ``explain`` config.
        out: the output folder.
        options: the options of ``cfg.method`` (`lungnet.commands.wrapper.explain_options`).
        method_options: the methods to score, each with its options (empty unless ``score`` is set).
    """
    if cfg.score not in SCORES:
        raise ExplainError(f"score={cfg.score}: choose {', '.join(SCORES)}")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    loaded = load_model(cfg.ckpt)
    items, root = images_for(loaded, str(cfg.images), cfg.data.root)
    summary = explain_checkpoint(
        loaded,
        items,
        cfg.method,
        int(cfg.n),
        cfg.class_index,
        out,
        cfg.cam_layer,
        report_dir=out,
        alpha=float(cfg.alpha),
        **options,
    )
    sections, result = [summary["markdown"]], {"explain": summary}
    if cfg.score != "none":
        scored = _score(cfg, loaded, items, root, out, method_options)
        sections.append(scored["markdown"])
        result["score"] = {k: v for k, v in scored.items() if k not in {"summary", "images"}}
    report = write_text(out / f"explanations_{cfg.method}.md", "\n".join(sections))
    log.info("Wrote %s", report)
    return result
