"""Explain a checkpoint from the command line, Hydra-style ``key=value`` arguments (no Hydra run dir).

    python -m lungnet.explain ckpt=<path> [method=gradcam] [n=16] [class_index=<label|index>]
        [cam_layer=backbone.layer3] [images=test|val|train|<folder>|<file.csv>] [data.root=<folder>]
        [out=<folder>] [options.batch_size=...] [score=none|synthetic|nih] [methods=gradcam,hirescam,...]
        [score_n=<max lesions>] [sanity=true] [threads=<torch threads>]

``method`` picks ``conf/explain/<method>.yaml`` (its defaults: ``n``, ``class_index``, ``cam_layer``,
``options``); every other key overrides it. ``images`` defaults to the checkpoint's own test split.
``score=synthetic`` scores ``methods`` against the phantoms' lesion masks of that split,
``score=nih`` against the radiologists' boxes of ``BBox_List_2017.csv`` under ``data.root``.
Outputs go to ``out`` (default ``outputs/explain/<date>/<time>``): overlays, grid, CSVs, ``explanations_<method>.md``.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from lungnet.checkpoint import LoadedModel, load_model
from lungnet.data.datamodule import LungDataModule, resolve_root
from lungnet.data.sources import walk_images
from lungnet.data.splits import ExpectedSplits
from lungnet.explain.base import ExplainError
from lungnet.explain.cams import list_methods
from lungnet.explain.groundtruth import nih_box_cases, synthetic_cases
from lungnet.explain.pointing import score_checkpoint
from lungnet.explain.run import explain_checkpoint
from lungnet.io import write_text
from lungnet.labels import match_label

log = logging.getLogger("lungnet.explain")

CONF = Path(__file__).resolve().parents[2] / "conf" / "explain"
DEFAULTS = {
    "ckpt": "???",
    "method": "gradcam",
    "n": 16,
    "class_index": None,
    "cam_layer": None,
    "options": {},
    "images": "test",
    "data": {"root": None},
    "out": None,
    "score": "none",
    "methods": ",".join(list_methods()),
    "score_n": None,
    "sanity": True,
    "threads": None,
}


def parse(argv: list[str]) -> DictConfig:
    """``key=value`` arguments -> config: defaults, then ``conf/explain/<method>.yaml``, then the arguments."""
    bad = [a for a in argv if "=" not in a]
    if bad:
        raise ExplainError(
            f"Arguments must be key=value, got {bad}; e.g. ckpt=run/checkpoints/best.ckpt method=gradcam"
        )
    overrides = OmegaConf.from_dotlist(argv)
    method = str(overrides.get("method", DEFAULTS["method"]))
    if method not in list_methods():
        raise ExplainError(f"Unknown method '{method}'; choose from {', '.join(list_methods())}")
    cfg = OmegaConf.create(DEFAULTS)
    method_yaml = CONF / f"{method}.yaml"
    if method_yaml.is_file():
        cfg = OmegaConf.merge(cfg, OmegaConf.load(method_yaml))
    cfg = OmegaConf.merge(cfg, overrides)
    if OmegaConf.is_missing(cfg, "ckpt"):
        raise ExplainError("ckpt=<path to a lungnet checkpoint> is required")
    return cfg


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


def main(argv: list[str] | None = None) -> dict:
    """Runs the explanation (and optional scoring) described by ``argv``; returns the summaries."""
    cfg = parse(sys.argv[1:] if argv is None else argv)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    out = Path(cfg.out or Path("outputs") / "explain" / datetime.now().strftime("%Y-%m-%d/%H-%M-%S"))
    loaded = load_model(cfg.ckpt)
    items, root = images_for(loaded, str(cfg.images), cfg.data.root)
    options = OmegaConf.to_container(cfg.options, resolve=True) or {}
    class_index = cfg.class_index
    summary = explain_checkpoint(
        loaded, items, cfg.method, int(cfg.n), class_index, out, cfg.cam_layer, report_dir=out, **options
    )
    sections, result = [summary["markdown"]], {"explain": summary}
    if cfg.score != "none":
        if cfg.score == "synthetic":
            cases = synthetic_cases(items, loaded.labels)
        elif cfg.score == "nih":
            cases = nih_box_cases(cfg.data.root or root or loaded.data.get("root"), loaded.labels)
        else:
            raise ExplainError(f"score={cfg.score}: choose none, synthetic or nih")
        methods = [m.strip() for m in str(cfg.methods).split(",") if m.strip()]
        per_method = {
            m: dict(OmegaConf.load(CONF / f"{m}.yaml").options) for m in methods if (CONF / f"{m}.yaml").is_file()
        }
        scored = score_checkpoint(
            loaded,
            cases,
            methods,
            out,
            str(cfg.score),
            cfg.score_n,
            bool(cfg.sanity),
            cfg.cam_layer,
            method_options=per_method,
        )
        sections.append(scored["markdown"])
        result["score"] = {k: v for k, v in scored.items() if k not in {"summary", "images"}}
    report = write_text(out / f"explanations_{cfg.method}.md", "\n".join(sections))
    log.info("Wrote %s", report)
    return result


if __name__ == "__main__":
    from lungnet.cli import run_safely

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    run_safely(main)
