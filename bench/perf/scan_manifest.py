"""Setup scan cost (issue #27 §1): threads vs processes on a few hundred images, then the first scan of a data set
(no manifest) against the next command's (manifest reused), in CPU seconds of this process and its children.

    python -m bench.common.nih_like --dest /tmp/nihlike --n 1500 --size 1024
    python -m bench.perf.scan_manifest --root /tmp/nihlike --pool 300 --workers 1
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common.cli import main
from bench.common.proc_cpu import reaped_cpu_seconds as cpu
from lungnet.data.checks import _check_one, available_cores, check_paths
from lungnet.data.datamodule import LungDataModule
from lungnet.models.specs import ModelSpec

log = logging.getLogger("bench")


def timed(fn) -> tuple[float, float]:
    c0, w0 = cpu(), time.perf_counter()
    fn()
    return cpu() - c0, time.perf_counter() - w0


def pools(paths: list[str], workers: int) -> dict:
    """The image checks serial, in threads and in processes: ``{name: {cpu_s, wall_s}}``."""
    out = {}

    def threads():
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda p: _check_one(p, True), paths))

    for name, fn in (
        ("serial", lambda: check_paths(paths, True, 1)),
        (f"threads x{workers}", threads),
        (f"processes x{workers}", lambda: check_paths(paths, True, workers)),
    ):
        c, w = timed(fn)
        log.info(
            "%-14s %4d images: %.2f s wall, %.2f s CPU (%.1f ms CPU/img)", name, len(paths), w, c, 1000 * c / len(paths)
        )
        out[name] = {"cpu_s": c, "wall_s": w}
    return out


def setups(root: str, cache: str, workers: int | None) -> dict:
    """Three loads of the data set's table (scan, checks, splits) as train.py does; CPU of scan processes is not
    counted (they are the forkserver's children): measure the first scan's CPU with ``--workers 1``."""
    cfg = {"name": "nih14", "source": "nih14", "root": root, "scan_workers": workers}
    spec = ModelSpec("bench", "bench", input_size=64)
    out = {}
    for label in ("first command (no manifest)", "second command (manifest)", "third command (manifest)"):
        c, w = timed(lambda: LungDataModule(cfg, spec, cache_dir=cache).load_table())
        log.info("%-28s setup: %.2f s wall, %.2f s CPU", label, w, c)
        out[label] = {"cpu_s": c, "wall_s": w}
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The data set, the pool size and the scan workers."""
    parser.add_argument("--root", required=True)
    parser.add_argument("--pool", type=int, default=300, help="images for the threads-vs-processes comparison")
    parser.add_argument("--workers", type=int, default=1, help="data.scan_workers of the loads (1: CPU counted)")


def run(args: argparse.Namespace) -> dict:
    """The threads-vs-processes comparison and the three setups."""
    paths = sorted(str(p) for p in Path(args.root, "images").glob("*.png"))
    log.info("%d images under %s; %d available cores", len(paths), args.root, available_cores())
    result = {"images": len(paths), "cores": available_cores()}
    if args.pool:
        result["pools"] = pools(paths[: args.pool], available_cores())
    cache = tempfile.mkdtemp(prefix="lungnet-manifest-")
    try:
        result["setups"] = setups(args.root, cache, args.workers)
    finally:
        shutil.rmtree(cache)
    return result


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main("scan_manifest", __doc__, add_arguments, run)
