"""Near-duplicate search time against the number of images: multi-index hashing vs comparing every pair.

Realistic hashes, not uniform random bits: a dHash's bits are the signs of the 16x16 horizontal differences of a
box-downsampled image, strongly correlated on radiographs. The script reads real radiographs (``--images``,
default the NIH sample beside the project), fits the mean and covariance of their differences, and draws each
synthetic image as a real one's differences shrunk towards the mean plus correlated Gaussian noise
(``x = mu + c * (sqrt(1 - w) * (d_seed - mu) + sqrt(w) * g)``, ``g ~ N(0, cov)``; ``w = 0.35``, ``c = 0.8``
reproduce the NIH sample's block collision entropy, about 9.8 bits a 20-bit block, and its pairwise distance
percentiles, 1st 42 bits, median 79). On top, ``--near`` of the rows become near copies of another row (its
differences plus small noise: a few to ~15 flipped bits) and a tenth of those exact copies.

For each N the set is searched against itself at ``--threshold`` (pairs i < j, as `near_groups` does), with
wall and CPU seconds (the machine may be shared: CPU seconds hardly depend on the load); the pairwise search
runs up to ``--brute-max`` images (its result is checked equal). The exponent is a least-squares fit of
log(seconds) on log(N) over the rows with N >= 16k.

Example:
    python -m bench.perf.near_duplicates --sizes 1000 4000 16000 56000 112000 224000 --brute-max 56000
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common.cli import ROOT, main
from lungnet.data.images import read_image
from lungnet.data.near_duplicates import brute_force_pairs, near_pairs_within

log = logging.getLogger("bench.near_duplicates")


def differences(folder: Path, limit: int) -> np.ndarray:
    """(n, 256) horizontal differences of the 16x17 box-downsampled images under ``folder`` (the dHash's inputs)."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})[:limit]
    if len(files) < 300:
        raise SystemExit(f"--images {folder}: {len(files)} images; the model needs at least 300 real radiographs")
    out = []
    for f in files:
        small = Image.fromarray(np.asarray(read_image(str(f)), np.float32), mode="F").resize((17, 16), Image.BOX)
        grid = np.asarray(small, np.float64)
        out.append((grid[:, 1:] - grid[:, :-1]).ravel())
    return np.array(out)


def generate(real: np.ndarray, n: int, near: float, rng: np.random.Generator) -> np.ndarray:
    """(n, 4) uint64 dHashes drawn from the model in the module docstring, with planted near and exact copies."""
    mu, cov = real.mean(0), np.cov(real, rowvar=False)
    chol = np.linalg.cholesky(cov + 1e-6 * np.trace(cov) / 256 * np.eye(256))
    x = np.empty((n, 256))
    for start in range(0, n, 50_000):  # bounded memory
        k = min(50_000, n - start)
        seeds = real[rng.integers(0, len(real), k)] - mu
        x[start : start + k] = mu + 0.8 * (
            np.sqrt(0.65) * seeds + np.sqrt(0.35) * rng.standard_normal((k, 256)) @ chol.T
        )
    copies = rng.choice(n, int(near * n), replace=False)
    originals = rng.integers(0, n, len(copies))
    scale = rng.uniform(0.0, 0.25, (len(copies), 1)) * np.sqrt(np.diag(cov))
    scale[: len(copies) // 10] = 0  # exact copies
    x[copies] = x[originals] + scale * rng.standard_normal((len(copies), 256))
    return np.packbits(x > 0, axis=1).view(np.uint64)


def timed(fn, *args) -> tuple[object, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def fit_exponent(sizes: list[int], seconds: list[float]) -> float:
    keep = [(n, s) for n, s in zip(sizes, seconds, strict=True) if n >= 16_000 and s > 0]
    if len(keep) < 2:
        return float("nan")
    n, s = np.log([k[0] for k in keep]), np.log([k[1] for k in keep])
    return float(np.polyfit(n, s, 1)[0])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The real images to fit on, the sizes, the threshold, the near-copy share and the pairwise limit."""
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "data" / "nih" / "images")
    parser.add_argument("--limit", type=int, default=2000, help="real images read to fit the model")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000, 56000, 112000, 224000])
    parser.add_argument("--threshold", type=int, default=12)
    parser.add_argument("--near", type=float, default=0.01, help="share of rows that are near copies")
    parser.add_argument("--brute-max", type=int, default=56000, help="largest N also searched pairwise")


def run(args: argparse.Namespace) -> dict:
    """Both searches at every size, and the growth exponents."""
    real = differences(args.images, args.limit)
    rng = np.random.default_rng(args.seed)
    log.info("model fitted on %d real images (%s)", len(real), args.images)
    log.info("| N | pairs found | MIH wall s | MIH CPU s | pairwise wall s | pairwise CPU s |")
    log.info("|---|---|---|---|---|---|")
    rows = []
    for n in args.sizes:
        hashes = generate(real, n, args.near, rng)
        found, wall, cpu = timed(near_pairs_within, hashes, args.threshold)
        brute, seconds = ("-", "-"), (None, None)
        if n <= args.brute_max:
            pairs, b_wall, b_cpu = timed(brute_force_pairs, hashes, hashes, args.threshold)
            if not np.array_equal(pairs[pairs[:, 0] < pairs[:, 1]], found):
                raise SystemExit(f"N={n}: multi-index hashing and the pairwise search disagree")
            brute, seconds = (f"{b_wall:.1f}", f"{b_cpu:.1f}"), (b_wall, b_cpu)
        rows.append((n, wall, cpu, len(found), *seconds))
        log.info("| %d | %d | %.2f | %.2f | %s | %s |", n, len(found), wall, cpu, *brute)
    sizes = [r[0] for r in rows]
    exponent = {"wall": fit_exponent(sizes, [r[1] for r in rows]), "cpu": fit_exponent(sizes, [r[2] for r in rows])}
    log.info("exponent (N >= 16k): wall %.2f, CPU %.2f", exponent["wall"], exponent["cpu"])
    keys = ("n", "mih_wall_s", "mih_cpu_s", "pairs", "pairwise_wall_s", "pairwise_cpu_s")
    return {"rows": [dict(zip(keys, r, strict=True)) for r in rows], "exponent": exponent}


if __name__ == "__main__":
    main("near_duplicates", __doc__, add_arguments, run)
