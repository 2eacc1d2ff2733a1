"""The per-batch normalisation a scoring loop runs in its main process on a CPU-only machine (issue #27 §3).

    python -m bench.perf.normalise_batch [--batches 40] [--rounds 3] [--out normalise_batch.json]

`lungnet.scoring.outputs.model_outputs` gets uint8 batches from the prepared store and normalises each with
`lungnet.data.transforms.Normalize.batch`, since 2026-12-07 into one result tensor reused from batch to batch
(``out``). This times that call per image, a fresh result per batch against the reused one, at 224 px for 3 and
1 channels and batch sizes 32 and 64 (``data.batch_size``'s default and evaluate's), in rounds that interleave the two,
in this process with glibc's allocator as a training or evaluate process has it (`keep_large_buffers` only runs in
loader workers). Between batches the bench frees and touches ``--between-mb`` of other memory, standing in for the
forward pass's activations (a resnet50's first stage alone is 100 MB for 32 images). CPU seconds of this process, one
thread. Growth: linear in ``--batches``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.common.cli import main

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Sizes of the loop and of the stand-in for the model's memory."""
    parser.add_argument("--batches", type=int, default=40, help="batches per timing")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (fresh, then reused)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--between-mb", type=int, default=100, help="memory allocated and touched between batches")


def time_loop(norm, raw: torch.Tensor, batches: int, reuse: bool, between_mb: int) -> float:
    """CPU ms per image of ``batches`` calls of ``norm.batch`` on ``raw`` (fresh results, or one reused)."""
    out, spent = None, 0.0
    for _ in range(batches):
        start = time.process_time()
        result = norm.batch(raw, out=out if reuse else None)
        spent += time.process_time() - start
        out = result if reuse else None
        del result
        if between_mb:
            torch.ones(between_mb << 18)  # float32: 4 bytes each
    return 1000 * spent / (batches * len(raw))


def run(args: argparse.Namespace) -> dict:
    """Median CPU ms per image, fresh against reused, per channel count and batch size."""
    from lungnet.data.transforms import Normalize

    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(args.seed)
    cases, figures = {}, []
    for chans in (3, 1):
        norm = Normalize(MEAN, STD, chans)
        for size in args.batch_sizes:
            side = args.image_size
            raw = torch.randint(0, 256, (size, 1, side, side), dtype=torch.uint8, generator=generator)
            times = {"fresh": [], "reused": []}
            time_loop(norm, raw, 2, True, args.between_mb)  # warm-up
            for _ in range(args.rounds):
                for kind in times:
                    times[kind].append(time_loop(norm, raw, args.batches, kind == "reused", args.between_mb))
            cases[f"{chans}ch_b{size}"] = times
            fresh, reused = (" / ".join(f"{t:.3f}" for t in times[k]) for k in ("fresh", "reused"))
            figures.append(
                {
                    "figure": f"Normalize.batch, {chans} channel(s), batch {size}, {side} px: CPU ms per image, a "
                    "fresh result per batch vs one reused (model_outputs since 2026-12-07)",
                    "value": f"{fresh} vs {reused} in {args.rounds} rounds (medians "
                    f"{statistics.median(times['fresh']):.3f} vs {statistics.median(times['reused']):.3f})",
                }
            )
    return {"args": vars(args), "ms_per_image": cases, "figures": figures}


if __name__ == "__main__":
    main("normalise_batch", __doc__, add_arguments, run)
