"""predict.py throughput against bare decoding: images/s of ``run_batch`` (the predict command, ``num_workers``
decoding processes) over a folder, and of one process that only decodes the same files with Pillow.

Runs decode, predict (each ``--workers`` value), decode, ... interleaved, and compares each predict run with the mean
of the decode runs around it, so a machine shared with other work shifts both alike. Start-up is excluded: the
predict time runs from the call of ``Predictor.predict_iter`` (model loaded) to its last row (DataLoader workers
started and joined inside it). Every run records its CPU seconds (this process and its reaped workers, `os.times`)
and the load average. The files are read once before timing (page cache warm for both). ``inputs_w<N>`` runs
time the workers' part alone (`lungnet.data.inputs.InputFiles`: read once, SHA-1, decode, preprocess; no model).
The default model is a random ``simple_cnn`` at 32 px, so that the model costs little next to the decode.

Example (a 1024 px NIH-like folder, `bench.common.nih_like`):
    python -m bench.common.nih_like --dest /tmp/nihlike_p --n 300 --size 1024
    python -m bench.perf.predict_throughput --images /tmp/nihlike_p/images --workers 0 2 --out /tmp/predict_tp.json
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads collapse on a shared CPU

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bench.common.cli import main  # noqa: E402

log = logging.getLogger(__name__)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its reaped children (the DataLoader workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def decode_only(files: list[Path]) -> dict:
    """One process, Pillow only: open, decode and convert to grayscale pixels."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    for f in files:
        with Image.open(f) as img:
            np.asarray(img.convert("L"))
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    return {"kind": "pil_decode", "img_s": len(files) / wall, "wall_s": wall, "cpu_s": cpu, "load": os.getloadavg()}


def inputs_run(prep, files: list[Path], workers: int, batch_size: int) -> dict:
    """The workers' part alone: a DataLoader over `lungnet.data.inputs.InputFiles` (read once, SHA-1, decode,
    preprocess), no model."""
    from torch.utils.data import DataLoader

    from lungnet.data.inputs import InputFiles, collate_inputs

    loader = DataLoader(InputFiles(files, prep), batch_size=batch_size, num_workers=workers, collate_fn=collate_inputs)
    wall, cpu = time.perf_counter(), cpu_seconds()
    n = sum(len(batch) for batch in loader)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    return {"kind": f"inputs_w{workers}", "img_s": n / wall, "wall_s": wall, "cpu_s": cpu, "load": os.getloadavg()}


def predict_run(ckpt: Path, images: Path, workers: int, batch_size: int, out: Path) -> dict:
    """``run_batch`` (the predict command) on ``images``; timed from ``predict_iter``'s call to its last row."""
    from lungnet.serve.inference import Predictor
    from lungnet.serve.predict_batch import run_batch
    from tests.conftest import compose_cfg

    marks: dict = {}
    original = Predictor.predict_iter

    def timed(self, *args, **kwargs):
        marks["start"], marks["cpu"] = time.perf_counter(), cpu_seconds()
        yield from original(self, *args, **kwargs)
        marks["end"], marks["cpu_end"] = time.perf_counter(), cpu_seconds()

    Predictor.predict_iter = timed
    try:
        overrides = [f"ckpt={ckpt}", f"input={images}", f"batch_size={batch_size}", f"num_workers={workers}"]
        total = time.perf_counter()
        path = run_batch(compose_cfg("predict", [*overrides, "decision=none"]), out)
        total = time.perf_counter() - total
    finally:
        Predictor.predict_iter = original
    rows = sum(1 for _ in open(path)) - 1
    wall = marks["end"] - marks["start"]
    return {
        "kind": f"predict_w{workers}",
        "img_s": rows / wall,
        "wall_s": wall,
        "with_startup_s": total,
        "cpu_s": marks["cpu_end"] - marks["cpu"],
        "load": os.getloadavg(),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The image folder, the model, the worker counts and the rounds."""
    parser.add_argument("--images", required=True, help="a folder of images (e.g. bench.common.nih_like's images/)")
    parser.add_argument("--ckpt", default=None, help="a model (default: a random simple_cnn checkpoint)")
    parser.add_argument(
        "--image-size", type=int, default=32, help="input size of the default checkpoint (small: cheap model)"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1, help="decode/predict rounds (decode closes the last)")


def run(args: argparse.Namespace) -> dict:
    """Interleaved decode-only, inputs-only and predict runs; the record holds every run."""
    files = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() == ".png")
    for f in files:  # page cache warm for every run
        f.read_bytes()
    tmp = Path(tempfile.mkdtemp(prefix="predict_tp_"))
    ckpt = Path(args.ckpt) if args.ckpt else None
    if ckpt is None:
        from tests.serve.test_inference import make_checkpoint

        ckpt = make_checkpoint(tmp / "best.ckpt", size=args.image_size)
    from lungnet.serve.inference import Predictor

    prep = Predictor(ckpt, decision="none").prep
    runs = [decode_only(files)]
    for r in range(args.rounds):
        for w in args.workers:
            runs.append(inputs_run(prep, files, w, args.batch_size))
            runs.append(decode_only(files))
            runs.append(predict_run(ckpt, Path(args.images), w, args.batch_size, tmp / f"r{r}_w{w}"))
            runs.append(decode_only(files))
    decodes = [i for i, run in enumerate(runs) if run["kind"] == "pil_decode"]
    for i, run in enumerate(runs):
        if run["kind"] != "pil_decode":
            around = [runs[j] for j in decodes if abs(j - i) == 1]
            run["ratio_vs_decode"] = run["img_s"] / statistics.mean(r["img_s"] for r in around)
            # on a shared machine the CPU per image compares better: 2 workers on 2 quiet cores give 1.2x the
            # images/s of one decoding core when this is at most ~1.6
            run["cpu_ratio_vs_decode"] = run["cpu_s"] / statistics.mean(r["cpu_s"] for r in around)
    for run in runs:
        log.info(
            "%-12s %7.2f img/s  wall %6.1f s  cpu %6.1f s (%5.1f ms/img)  load %s%s",
            run["kind"],
            run["img_s"],
            run["wall_s"],
            run["cpu_s"],
            1000 * run["cpu_s"] / len(files),
            " ".join(f"{x:.2f}" for x in run["load"]),
            f"  ratio {run['ratio_vs_decode']:.2f}x, CPU {run['cpu_ratio_vs_decode']:.2f}x"
            if "cpu_ratio_vs_decode" in run
            else "",
        )
    facts = {"files": len(files), "cores": os.cpu_count(), "machine": platform.processor() or platform.machine()}
    return {**facts, "args": vars(args), "runs": runs}


if __name__ == "__main__":
    main("predict_throughput", __doc__, add_arguments, run)
