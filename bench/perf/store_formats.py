"""lungnet's prepared store against LitData's optimized format on the same images (issue #27 §2: choose by benchmark).

    python -m bench.perf.store_formats [--images 300] [--rounds 3] [--workers 2] [--out store_formats.json]

LitData (``pip install litdata``) is not a dependency of lungnet: this script imports it when it runs and stops with
one line if it is missing. Both formats hold the same uint8 images at ``--image-size`` px, decoded once from the
seeded 1024 px PNG set of `bench.perf.loader` (`bench.perf.loader.make_set`) by lungnet's own
`lungnet.data.cache.prepare_image`:

- the store is built the way a training run builds it, through the data module (`LungDataModule.make_dataset` with
  ``data.cache=true``, which calls `lungnet.data.cache.build_store`: ``--optimize-workers`` decoding threads);
- LitData's dataset is written by ``litdata.optimize`` (``--optimize-workers`` processes, started by
  ``--start-method``; one item per image: its index and the uint8 array) and read by ``litdata.StreamingDataset``
  (``shuffle=True``, as a training run would read it).

Build: CPU seconds of this process and all its children (worker processes that finished included) and bytes on
disk. Read: every image through a torch DataLoader (batch ``--batch-size``), with 0 workers and then each count in
``--workers`` (fork, persistent, one untimed epoch first), ``--epochs`` epochs per timing, either as plain bytes
(what the workers of a ``data.gpu_augment=true`` run do: lungnet's pipeline without augmentation or `Normalize`) or
through lungnet's training pipeline (``--augment``, default ``xray``, then `Normalize`: the very `SeededPipeline`
object the store's dataset holds, seeded per image the same way for both formats). Figures: CPU ms per image of
the process tree (/proc: hardly affected by other work on a shared machine) and wall-clock images/s (which is).
A check reads every LitData item back in order and asserts it is byte-identical to the store's row, and that the
augmented tensors are equal. Builds and reads alternate between the formats within each of ``--rounds`` rounds
(the order swapped every round), so drift in the machine's load hits both alike; the figures are medians.
Everything is written under ``--work`` (a temporary folder by default), LitData's caches included.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from bench.common.cli import main
from bench.common.proc_cpu import all_cpu_seconds as cpu_seconds
from bench.perf.loader import dataset, make_set
from lungnet.data.cache import prepare_image
from lungnet.data.dataset import EpochSampler, derive_seed
from lungnet.data.transforms import build_transform

log = logging.getLogger("bench.store_formats")
FORMATS = ("store", "litdata")
PIPELINES = ("bytes", "augment")


def disk_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


class PrepareItem:
    """LitData's ``fn``: one ``(index, path)`` -> ``{"index", "image"}``, the image prepared by lungnet's own
    `prepare_image` with the store's resize (picklable: optimize's workers may be spawned)."""

    def __init__(self, side: int, resize: str, downsample_to: int | None) -> None:
        self.transform = build_transform(side, None, resize, downsample_to)

    def __call__(self, item: tuple[int, str]) -> dict:
        index, path = item
        return {"index": int(index), "image": prepare_image(path, self.transform)}


class Pipelined:
    """StreamingDataset's ``transform``: the store dataset's `SeededPipeline`, seeded as `XrayDataset` seeds it
    (run seed, epoch, index). The array is copied first, as `lungnet.data.cache.PreparedReader` copies its row."""

    def __init__(self, pipeline, seed: int, epoch: int = 1) -> None:
        self.pipeline, self.seed, self.epoch = pipeline, seed, epoch

    def __call__(self, item: dict) -> dict:
        index = int(item["index"])
        image = self.pipeline(np.array(item["image"]), seed=derive_seed(self.seed, self.epoch, index))
        return {"image": image, "index": index}


def build_store(paths: list[Path], args, folder: Path) -> tuple[dict, dict]:
    """The store of ``paths`` through the data module; its datasets (bytes, augment) and the build's cost."""
    conf = argparse.Namespace(**{**vars(args), "workers": args.optimize_workers})
    c0 = cpu_seconds()
    augmented, _, built = dataset("store", paths, conf, folder)
    cost = {"build_cpu_s": cpu_seconds() - c0, "build_wall_s": built["build_s"], "bytes": disk_bytes(folder)}
    plain, _, _ = dataset("store_gpu", paths, conf, folder)  # the same store, found again: uint8 out
    return {"bytes": plain, "augment": augmented}, cost


def build_litdata(litdata, paths: list[Path], args, folder: Path) -> dict:
    """LitData's optimized dataset of the same images (the store's resize: ``args.resize``); the build's cost."""
    fn = PrepareItem(args.image_size, args.resize, args.downsample_to)
    c0, t0 = cpu_seconds(), time.perf_counter()
    litdata.optimize(
        fn=fn,
        inputs=[(i, str(p)) for i, p in enumerate(paths)],
        output_dir=str(folder),
        num_workers=args.optimize_workers,
        chunk_bytes=args.chunk_bytes,
        start_method=args.start_method,
        verbose=False,
    )
    return {"build_cpu_s": cpu_seconds() - c0, "build_wall_s": time.perf_counter() - t0, "bytes": disk_bytes(folder)}


def streaming(litdata, folder: Path, cache: Path, transform=None, shuffle: bool = True):
    """A StreamingDataset over ``folder`` (its cache under ``cache``)."""
    return litdata.StreamingDataset(str(folder), cache_dir=str(cache), shuffle=shuffle, transform=transform)


def check_identical(litdata, folder: Path, cache: Path, store: dict) -> int:
    """Every LitData item, in order, equals the store's row byte for byte, and the augmented tensors are equal."""
    stored, augmented = store["bytes"], store["augment"]
    items = streaming(litdata, folder, cache, shuffle=False)
    seen = 0
    for item in items:
        index = int(item["index"])
        row = stored.reader(stored.paths[index])
        image = np.asarray(item["image"])
        if image.dtype != row.dtype or image.shape != row.shape or image.tobytes() != row.tobytes():
            raise SystemExit(f"LitData item {index} differs from the store's row ({image.dtype} {image.shape})")
        mine = Pipelined(augmented.pipeline, augmented.seed)({"index": index, "image": image})["image"]
        if not torch.equal(mine, augmented[(1, index)]["image"]):
            raise SystemExit(f"augmented LitData item {index} differs from the store's")
        seen += 1
    if seen != len(stored):
        raise SystemExit(f"LitData holds {seen} items, the store {len(stored)}")
    return seen


def loader(fmt: str, pipeline: str, workers: int, args, built: dict):
    """A DataLoader over one format with one pipeline, and what starts each epoch (the store's sampler, or the
    StreamingDataset's epoch)."""
    common = {"batch_size": args.batch_size, "num_workers": workers, "persistent_workers": workers > 0}
    if workers:
        common["multiprocessing_context"] = "fork"  # optimize() may have set spawn as the default
    if fmt == "store":
        ds = built["store"][pipeline]
        sampler = EpochSampler(len(ds), seed=0)
        return torch.utils.data.DataLoader(ds, sampler=sampler, **common), sampler.set_epoch
    template = built["store"][pipeline]
    ds = streaming(args.litdata, built["lit_dir"], built["lit_cache"], Pipelined(template.pipeline, template.seed))
    return torch.utils.data.DataLoader(ds, **common), ds.set_epoch


def read(fmt: str, pipeline: str, workers: int, args, built: dict) -> dict:
    """CPU ms per image (process tree) and images/s over ``args.epochs`` epochs, after one untimed epoch."""
    batches, set_epoch = loader(fmt, pipeline, workers, args, built)
    set_epoch(0)
    sum(len(b["image"]) for b in batches)  # workers started, files mapped
    seen, c0, t0 = 0, cpu_seconds(), time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        set_epoch(epoch)
        seen += sum(len(b["image"]) for b in batches)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    del batches
    gc.collect()  # persistent workers shut down before the next timing
    if seen != args.epochs * args.images:
        raise SystemExit(f"{fmt}: read {seen} images in {args.epochs} epochs of {args.images}")
    return {"cpu_ms_per_image": 1000 * cpu / seen, "images_per_s": seen / wall}


def one_round(r: int, paths: list[Path], args) -> dict:
    """Builds both formats and reads each in every configuration, alternating (the first format swaps each round)."""
    order = FORMATS if r % 2 == 0 else FORMATS[::-1]
    work = Path(args.work) / f"round{r}"
    built, out = {"lit_dir": work / "litdata", "lit_cache": work / "litdata-cache"}, {"order": list(order)}
    for fmt in order:
        if fmt == "store":
            built["store"], out["store_build"] = build_store(paths, args, work / "store")
        else:
            out["litdata_build"] = build_litdata(args.litdata, paths, args, built["lit_dir"])
    out["identical_items"] = check_identical(args.litdata, built["lit_dir"], built["lit_cache"], built["store"])
    for workers in [0, *[w for w in args.workers if w]]:
        for pipeline in PIPELINES:
            for fmt in order:
                out[f"{fmt}_{pipeline}_w{workers}"] = read(fmt, pipeline, workers, args, built)
                log.info(
                    "round %d %s %s %d workers: %s", r, fmt, pipeline, workers, out[f"{fmt}_{pipeline}_w{workers}"]
                )
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The image set, the formats' build settings, the loaders and the rounds."""
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--source-size", type=int, default=1024, help="side of the generated PNG files")
    parser.add_argument("--image-size", type=int, default=224, help="the stored side (the model's input size)")
    parser.add_argument("--augment", default="xray", help="conf/augment/<name>.yaml: the training pipeline")
    parser.add_argument("--in-chans", type=int, default=3, choices=(1, 3), help="the model's input channels")
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="DataLoader workers (after 0)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per read timing")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of builds and reads")
    parser.add_argument("--optimize-workers", type=int, default=1, help="optimize()'s processes, the store's threads")
    parser.add_argument("--start-method", default="fork", help="optimize()'s processes (LitData's default: spawn)")
    parser.add_argument("--chunk-bytes", default="4MB", help="LitData chunk size (several chunks per worker)")
    parser.add_argument("--set-dir", default="/tmp/lungnet-bench-loader", help="the generated PNGs (kept)")
    parser.add_argument("--work", help="where both formats are built (default: a temporary folder)")


def import_litdata():
    """LitData, or one line saying how to get it (lungnet does not depend on it)."""
    try:
        import litdata
    except ImportError as exc:
        raise SystemExit(
            "bench.perf.store_formats needs LitData, which lungnet does not install: pip install litdata"
        ) from exc
    return litdata


def run(args: argparse.Namespace) -> dict:
    """Rounds of builds and reads of both formats; medians as figures."""
    args.litdata = import_litdata()
    torch.set_num_threads(1)
    paths = make_set(
        Path(args.set_dir) / f"s{args.source_size}_n{args.images}_seed{args.seed}" / "train",
        args.images,
        args.source_size,
        args.seed,
    )
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        os.environ["DATA_OPTIMIZER_CACHE_FOLDER"] = str(Path(work) / "optimizer-cache")
        os.environ["DATA_OPTIMIZER_DATA_CACHE_FOLDER"] = str(Path(work) / "optimizer-data")
        conf = argparse.Namespace(**{**vars(args), "workers": 0})
        dm = dataset("direct", paths[:1], conf, Path(work))[1]  # the store's settings (nothing built)
        args.resize, args.downsample_to, args.work = dm.cfg["resize"], dm.cfg["downsample_to"], work
        rounds = [one_round(r, paths, args) for r in range(args.rounds)]
    del args.litdata
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "work"}
    return {
        "args": settings,
        "litdata": metadata.version("litdata"),
        "rounds": rounds,
        "figures": figures(rounds, args),
    }


def median(rounds: list[dict], key: str, field: str) -> tuple[float, str]:
    """The median of one figure over the rounds, and every round's value."""
    values = [r[key][field] for r in rounds]
    return statistics.median(values), " / ".join(f"{v:.3g}" for v in values)


def figures(rounds: list[dict], args) -> list[dict]:
    """Build cost and bytes, then each read configuration: the store against LitData."""
    n, out = args.images, []
    for field, what in (("build_cpu_s", "CPU s"), ("bytes", "bytes on disk")):
        (s, s_all), (lit, lit_all) = median(rounds, "store_build", field), median(rounds, "litdata_build", field)
        out.append(
            {
                "figure": f"Prepared store vs LitData optimize() ({args.optimize_workers} worker(s)), build of {n} "
                f"{args.source_size} px PNGs at {args.image_size} px uint8: {what}",
                "value": f"store {s:.4g} vs LitData {lit:.4g} (rounds: {s_all} vs {lit_all})",
            }
        )
    for workers in [0, *[w for w in args.workers if w]]:
        for pipeline in PIPELINES:
            what = f"augment={args.augment} + Normalize" if pipeline == "augment" else "uint8 bytes, no augmentation"
            cells = []
            for field, unit in (("cpu_ms_per_image", "CPU ms/img"), ("images_per_s", "img/s")):
                s, s_all = median(rounds, f"store_{pipeline}_w{workers}", field)
                lit, lit_all = median(rounds, f"litdata_{pipeline}_w{workers}", field)
                cells.append(f"{unit}: store {s:.3g} vs LitData {lit:.3g} ({s_all} vs {lit_all})")
            out.append(
                {
                    "figure": f"Prepared store vs LitData StreamingDataset, DataLoader with {workers} worker(s), "
                    f"{args.image_size} px, {what} (medians of {len(rounds)} rounds; {n} images, LitData "
                    f"items byte-identical to the store's)",
                    "value": "; ".join(cells),
                }
            )
    return out


if __name__ == "__main__":
    main("store_formats", __doc__, add_arguments, run)
