"""The steps of issue #27 that lungnet moves to the accelerator, timed on it and checked against the host.

Three measurements, each on ``--device`` (a CUDA device on a lent GPU machine; ``cpu`` checks the script here):

- ``normalize``: `lungnet.data.transforms.Normalize.batch` of a uint8 batch (the scoring loader's bytes, and
  ``data.gpu_augment``'s training batches) into ``--in-chans`` float32 channels, ms per image, and whether it gives
  the host's numbers bit for bit;
- ``gate``: the OOD gate's statistics of ``--rows`` x ``--features`` features (the squares about the class means,
  `lungnet.scoring.scatter.squares_about`) and its leading axes (`leading_axes`), on the device and on the host:
  wall seconds of each, the host's CPU seconds in each (on a GPU machine: what the host still spends), and the
  largest relative difference of the squares, the eigenvalues and the gate's scores;
- ``reduce``: `lungnet.evaluation.sharded.reduced_scatters` in a one-process group of the device's backend (NCCL for
  CUDA, gloo for the CPU): the collective path after a DDP training, against `lungnet.scoring.scatter.Scatter.of`.

Each part that fails is recorded with its error (the others still run). Device times are wall seconds after
``torch.cuda.synchronize``, the median of ``--repeats``.

    python -m bench.perf.gpu_parts --out $OUT/gpu_parts.json               # on a GPU machine
    python -m bench.perf.gpu_parts --device cpu --rows 2000 --features 256 --out /tmp/gpu_parts.json
"""

from __future__ import annotations

import argparse
import logging
import socket
import statistics
import time

import numpy as np
import torch

from bench.common.cli import main

log = logging.getLogger("bench.gpu_parts")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> tuple[float, object, float]:
    """The median wall seconds of ``repeats`` calls of ``fn`` after one warm-up, the last result, and the median
    CPU seconds of this process in those calls (what the host still spends on a step moved to the device)."""
    out = fn()
    seconds, cpu = [], []
    for _ in range(max(1, repeats)):
        _sync(device)
        start, cpu0 = time.perf_counter(), time.process_time()
        out = fn()
        _sync(device)
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu0)
    return statistics.median(seconds), out, statistics.median(cpu)


def normalize_part(args, device: torch.device) -> dict:
    """`Normalize.batch` on the device: ms per image, and equality with the host's result."""
    from lungnet.data.transforms import Normalize

    normalize = Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225], args.in_chans)
    gen = torch.Generator().manual_seed(args.seed)
    host = torch.randint(0, 256, (args.batch, 1, args.size, args.size), dtype=torch.uint8, generator=gen)
    on_device = host.to(device)
    seconds, out, _ = timed(lambda: normalize.batch(on_device), device, args.repeats)
    return {
        "batch": args.batch,
        "size": args.size,
        "in_chans": args.in_chans,
        "ms_per_image": 1000 * seconds / args.batch,
        "equal_to_host": bool(torch.equal(out.cpu(), normalize.batch(host))),
    }


def features(args) -> tuple[np.ndarray, np.ndarray]:
    """Gate inputs with a low-rank class structure (as a backbone's): ``--rows`` x (``--features`` + thumbnail)."""
    from lungnet.scoring.gate_inputs import THUMB

    rng = np.random.default_rng(args.seed)
    classes = rng.integers(0, 4, args.rows)
    basis = rng.normal(size=(16, args.features))
    x = rng.normal(size=(args.rows, 16)) @ basis + rng.normal(size=(4, args.features))[classes] * 2
    x = np.abs(x + 0.3 * rng.normal(size=x.shape))  # non-negative, as pooled ReLU features
    thumbs = rng.normal(size=(args.rows, THUMB * THUMB))
    return np.concatenate([x, thumbs], axis=1).astype(np.float32), classes


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / max(float(np.max(np.abs(b))), 1e-30))


def gate_part(args, device: torch.device) -> dict:
    """The gate's squares and leading axes on the device and on the host: seconds and agreement."""
    from lungnet.scoring.gate_inputs import gate_scatters, split_inputs
    from lungnet.scoring.ood import ImageGate
    from lungnet.scoring.scatter import class_sums, leading_axes, squares_about

    inputs, classes = features(args)
    feats = split_inputs(inputs)[0]
    sums = class_sums(feats, classes, 4)
    out: dict = {"rows": args.rows, "features": args.features}
    host_device, repeats = torch.device("cpu"), args.repeats
    out["squares_host_s"], host, out["squares_host_cpu_s"] = timed(
        lambda: squares_about(feats, classes, sums), host_device, 1
    )
    out["squares_device_s"], dev, out["squares_device_host_cpu_s"] = timed(
        lambda: squares_about(feats, classes, sums, device), device, repeats
    )
    out["squares_max_rel_diff"] = _rel(dev, host)
    scatter = host / np.float32(args.rows - 4)
    k = min(64, args.features - 1)
    out["axes_host_s"], (values, _), out["axes_host_cpu_s"] = timed(lambda: leading_axes(scatter, k), host_device, 1)
    out["axes_device_s"], (got, _), out["axes_device_host_cpu_s"] = timed(
        lambda: leading_axes(scatter, k, device), device, repeats
    )
    out["eigenvalues_max_rel_diff"] = _rel(got, values)
    half = args.rows // 2
    gates = [
        ImageGate.from_scatters(*gate_scatters(inputs[:half], classes[:half], d), device=d).calibrate(inputs[half:])
        for d in (None, device)
    ]
    scores = [g.score(inputs[half:]) for g in gates]
    out["gate_scores_max_rel_diff"] = _rel(scores[1], scores[0])
    return out


def reduce_part(args, device: torch.device) -> dict:
    """`reduced_scatters` in a one-process group (NCCL on CUDA, gloo on the CPU) against `Scatter.of`."""
    import torch.distributed as dist

    from lungnet.evaluation.sharded import reduced_scatters
    from lungnet.scoring.gate_inputs import gate_scatters
    from lungnet.scoring.outputs import Outputs

    inputs, classes = features(args)
    with socket.socket() as free:  # a port no other process group uses
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        zeros = np.zeros((len(inputs), 4))
        part = Outputs("train", zeros, classes, [f"{i}" for i in range(len(inputs))], zeros, inputs)
        start = time.perf_counter()
        got = reduced_scatters(part, 4, device)
        seconds = time.perf_counter() - start
    finally:
        dist.destroy_process_group()
    want = gate_scatters(inputs, classes)
    return {
        "backend": backend,
        "seconds": seconds,
        "scatter_max_rel_diff": max(_rel(g.scatter, w.scatter) for g, w in zip(got, want, strict=True)),
        "means_max_rel_diff": max(_rel(g.means, w.means) for g, w in zip(got, want, strict=True)),
    }


PARTS = {"normalize": normalize_part, "gate": gate_part, "reduce": reduce_part}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The device, the batch for the normalisation, the gate's sample size and width, the repeats."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=256, help="images per normalised batch")
    parser.add_argument("--size", type=int, default=224, help="image side")
    parser.add_argument("--in-chans", type=int, default=3, help="the model's input channels")
    parser.add_argument("--rows", type=int, default=20000, help="the gate's sample (ood.fit_max)")
    parser.add_argument("--features", type=int, default=2048, help="pooled feature width (resnet50: 2048)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))


def run(args: argparse.Namespace) -> dict:
    """Each part on ``--device``; a failing part is recorded with its error and the others still run."""
    device = torch.device(args.device)
    result: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    for name in args.parts:
        try:
            result[name] = PARTS[name](args, device)
        except Exception as exc:  # a broken part must not cost the others: its error is the result
            log.exception("part %s failed", name)
            result[name] = {"error": f"{type(exc).__name__}: {exc}"}
        log.info("%s: %s", name, result[name])
    return result


if __name__ == "__main__":
    main("gpu_parts", __doc__, add_arguments, run)
