"""Training loader cost per image: the direct path (decode every file every epoch) vs the prepared store.

`bench.perf.throughput` times whole ``Trainer.fit`` epochs; this script times the loader alone, on a generated set of
1024 px PNGs made from the real radiographs in ``../shared/data`` (seeded: the same set every time), through the
data module's own datasets (`LungDataModule.make_dataset`), so the same script measures an older checkout of
lungnet too (from that checkout's root: ``PYTHONPATH=<this checkout> python -m bench.perf.loader --modes direct``;
the working directory comes first on the import path, so lungnet is that checkout's).

For each mode it reports the CPU milliseconds per image (user + system of this process and its loader workers,
from /proc: hardly affected by other work on a shared machine) and images per CPU second, which is the rate of one
loader worker that has a core to itself; and the wall-clock images/s of a DataLoader with ``--workers`` workers
(which does depend on the load). The direct path reads as a training run does after its data checks decoded every
file (``data.verify``): without the PNG length check (`lungnet.data.images.read_image` ``verified``).

Sizes: ``--source-size`` is the side of the generated PNG files (1024: NIH's), ``--image-size`` the model's input
size the loader resizes to and augments at (224); ``--files`` times a folder of existing images instead (the
NIH-like set of `bench.common.nih_like`: ``--files /tmp/nihlike/images``). ``--passes`` repeats the in-process timing
over that many epochs (each its own augmentation draws): a steadier figure on a shared machine.

Modes: ``direct`` (``data.cache=false``); ``store`` (``data.cache=true``: the prepared store, built first and timed
separately); ``store_gpu`` (the store with ``data.gpu_augment=true``: the workers only copy bytes; the batch
augmentation, `lungnet.data.batch_augment`, is timed in the in-process figures on the CPU, one thread, and left
out of the DataLoader figures: on a GPU it runs on the device). ``eval_store`` and ``eval_bytes``: the evaluation
pipeline from the store (what `lungnet.scoring.outputs.model_outputs` reads: the finish after training, evaluate.py),
normalised in the loader, or yielding uint8 with the per-batch normalisation as ``store_gpu``'s augmentation
(`lungnet.data.dataset.bytes_out`); ``device_step_cpu_ms_per_image`` is that per-batch step's share. The spec is a
3-channel model's (timm's default ``model.in_chans``; ``--in-chans 1``: a grayscale stem's).

Example:
    python -m bench.perf.loader --images 300 --image-size 224 --augment xray --workers 2 --modes direct store store_gpu
    python -m bench.perf.loader --files /tmp/nihlike/images --image-size 224 --workers -1 --passes 3 --modes direct
    python -m bench.perf.loader --images 300 --image-size 224 --workers 2 --passes 3 --modes eval_store eval_bytes
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
import yaml

import lungnet.data.dataset as dataset_module  # noqa: E402
from bench.common.cli import ROOT, main  # noqa: E402 - conf/ and ../shared
from bench.common.proc_cpu import tree_cpu_seconds  # noqa: E402
from lungnet.data.datamodule import LungDataModule  # noqa: E402
from lungnet.data.dataset import EpochSampler  # noqa: E402
from lungnet.data.images import native_size, read_image  # noqa: E402
from lungnet.models.specs import ModelSpec  # noqa: E402

log = logging.getLogger("bench.loader")


SHARED = ROOT.parent / "shared" / "data"


def make_set(out: Path, n: int, side: int, seed: int) -> list[Path]:
    """``n`` grayscale PNGs of ``side`` px from the shared radiographs: each a seeded random crop (80-100 % of the
    short side), resized, with detector-like noise (1.5 grey levels), so it compresses as a real scan does."""
    sources = sorted((SHARED / "kermany_val16").rglob("*.jpeg")) + sorted((SHARED / "darkcovidnet").rglob("*.jpg"))
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = out / ("NORMAL" if i % 2 else "PNEUMONIA") / f"img{i:04d}.png"
        paths.append(path)
        if path.exists():
            continue
        img = (read_image(sources[int(rng.integers(len(sources)))]) * 255).astype(np.uint8)
        h, w = img.shape
        crop = int(min(h, w) * rng.uniform(0.8, 1.0))
        top, left = int(rng.integers(h - crop + 1)), int(rng.integers(w - crop + 1))
        img = cv2.resize(img[top : top + crop, left : left + crop], (side, side), interpolation=cv2.INTER_CUBIC)
        img = np.clip(img + rng.normal(0, 1.5, img.shape), 0, 255).astype(np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), img)
    return paths


def dataset(mode: str, paths: list[Path], args, cache_dir: Path):
    """The dataset of ``mode`` from the data module (the store is built here when the mode uses it): training's, or
    for ``eval_*`` the evaluation pipeline's."""
    cfg = {
        "name": "bench",
        "source": "pneumonia",
        "root": str(paths[0].parent.parent.parent),
        "image_size": args.image_size,
        "cache": mode != "direct",
        "cache_dir": str(cache_dir),
        "num_workers": max(args.workers, 0),
        "gpu_augment": mode == "store_gpu",
    }
    augment = yaml.safe_load((ROOT / "conf" / "augment" / f"{args.augment}.yaml").read_text())["train"]
    spec = ModelSpec(name="bench", arch="bench", input_size=args.image_size, in_chans=args.in_chans)
    dm = LungDataModule(cfg, spec, seed=0, augment=augment, owns_data=True)
    rows = pd.DataFrame({"path": [str(p) for p in paths], "label": "NORMAL", "target": 0})
    rows["sha1"] = [f"{p.stat().st_size}-{p.stat().st_mtime_ns}" for p in paths]  # the old cache's key
    c0, t0 = tree_cpu_seconds(), time.perf_counter()
    ds = dm.make_dataset(rows, train=not mode.startswith("eval"))
    built = {
        "build_cpu_ms_per_image": 1000 * (tree_cpu_seconds() - c0) / len(paths),
        "build_s": time.perf_counter() - t0,
    }
    return ds, dm, built


def measure(mode: str, paths: list[Path], args, cache_dir: Path) -> dict:
    """One mode: in-process CPU ms per image, then a DataLoader epoch with ``args.workers`` workers (``eval_bytes``:
    both inside `lungnet.data.dataset.bytes_out`, the loader yielding uint8)."""
    ds, dm, built = dataset(mode, paths, args, cache_dir)
    if mode != "eval_bytes":
        return measure_dataset(mode, ds, dm, built, paths, args)
    from lungnet.data.dataset import bytes_out

    with bytes_out(ds) as normalize:
        if normalize is None:
            raise SystemExit("eval_bytes: this lungnet's evaluation dataset does not yield bytes")
        return measure_dataset(mode, ds, dm, built, paths, args, reusing(normalize))


def reusing(normalize):
    """``normalize.batch`` as `lungnet.scoring.outputs.model_outputs` calls it: each batch into the previous result
    (``out``, since 2026-12-07; a checkout without it makes a fresh one per batch)."""
    import inspect

    if "out" not in inspect.signature(normalize.batch).parameters:
        return normalize.batch
    kept = [None]

    def step(batch):
        kept[0] = normalize.batch(batch, out=kept[0])
        return kept[0]

    return step


def measure_dataset(mode: str, ds, dm, built: dict, paths: list[Path], args, device_step=None) -> dict:
    """`measure` of a built dataset; ``device_step``: what a GPU does to each batch (timed on the CPU in the
    in-process figure, and apart as ``device_step_cpu_ms_per_image``)."""
    augment_batch = device_step
    stepped = [0.0]
    if mode == "store_gpu":
        from lungnet.data.batch_augment import BatchAugment
        from lungnet.data.transforms import Normalize

        steps = BatchAugment.from_steps(dm.augment, seed=0)
        normalize = Normalize(dm.spec.mean, dm.spec.std, dm.spec.in_chans)
        augment_batch = lambda batch, step: normalize.batch(steps(batch, step))  # noqa: E731
    keep_buffers = getattr(dataset_module, "keep_large_buffers", None)  # absent in older checkouts
    if keep_buffers is not None:
        keep_buffers()  # the in-process figure stands for one loader worker, which calls it at start
    evaluation = mode.startswith("eval")  # read as model_outputs reads: by index, no seeded augmentation
    passes = range(1, max(1, args.passes) + 1)
    keys = [i if evaluation else (epoch, i) for epoch in passes for i in range(len(ds))]
    ds[keys[0]]  # warm-up (maps the store, imports)
    c0, t0 = time.process_time(), time.perf_counter()
    for start in range(0, len(keys), args.batch_size):
        batch = torch.stack([ds[k]["image"] for k in keys[start : start + args.batch_size]])
        if augment_batch is not None:
            s0 = time.process_time()
            batch = augment_batch(batch) if device_step is not None else augment_batch(batch, step=start)
            stepped[0] += time.process_time() - s0
    cpu = time.process_time() - c0
    one_core = {"cpu_ms_per_image": 1000 * cpu / len(keys), "images_per_cpu_s": len(keys) / cpu}
    one_core["device_step_cpu_ms_per_image"] = 1000 * stepped[0] / len(keys)
    one_core["wall_images_per_s_0_workers"] = len(keys) / (time.perf_counter() - t0)
    sizes = {"file_size": native_size(paths[0])[0], "image_size": args.image_size, "images_timed": len(keys)}
    if args.workers < 0:  # in-process figures only
        return {"lungnet": str(Path(dataset_module.__file__).parent.parent), "mode": mode, **sizes, **built, **one_core}
    sampler = None if evaluation else EpochSampler(len(ds), seed=0)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=args.batch_size,
        sampler=sampler,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        worker_init_fn=keep_buffers,
    )
    sum(len(b["image"]) for b in loader)  # workers started (they stay alive: their CPU time is read from /proc)
    c0, t0 = tree_cpu_seconds(), time.perf_counter()
    seen = sum(len(b["image"]) for b in loader)
    wall, cpu = time.perf_counter() - t0, tree_cpu_seconds() - c0
    out = {
        "lungnet": str(Path(dataset_module.__file__).parent.parent),
        "mode": mode,
        **sizes,
        **built,
        **one_core,
        "loader_images_per_s": seen / wall,
        "loader_cpu_ms_per_image": 1000 * cpu / seen,
    }
    log.info("%s", json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The generated set, the input size, the augmentation, the loader and the modes to time."""
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--source-size", type=int, default=1024, help="side of the generated PNG files")
    parser.add_argument("--image-size", type=int, default=224, help="model input size: the side trained at")
    parser.add_argument("--files", help="a folder of existing images to time instead of the generated set")
    parser.add_argument("--passes", type=int, default=1, help="epochs the in-process figures are timed over")
    parser.add_argument("--augment", default="xray", help="conf/augment/<name>.yaml")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers; -1: in-process figures only")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--in-chans", type=int, default=3, choices=(1, 3), help="the model's input channels")
    parser.add_argument("--modes", nargs="+", default=["direct", "store", "store_gpu"])
    parser.add_argument("--set-dir", default="/tmp/lungnet-bench-loader")


def run(args: argparse.Namespace) -> dict:
    """Times each mode on the generated set; the record holds one result per mode."""
    torch.set_num_threads(1)
    if args.files:
        paths = sorted(p for p in Path(args.files).rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
        paths = paths[: args.images]
    else:
        paths = make_set(
            Path(args.set_dir) / f"s{args.source_size}_n{args.images}_seed{args.seed}" / "train",
            args.images,
            args.source_size,
            args.seed,
        )
    with tempfile.TemporaryDirectory() as cache_dir:
        results = [measure(mode, paths, args, Path(cache_dir)) for mode in args.modes]
    return {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "results": results}


if __name__ == "__main__":
    main("loader", __doc__, add_arguments, run)
