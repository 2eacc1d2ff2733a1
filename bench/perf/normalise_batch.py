"""The per-batch normalisation a scoring loop runs in its main process on a CPU-only machine (issue #27 §3).

    python -m bench.perf.normalise_batch [--batches 40] [--rounds 3] [--out normalise_batch.json]

`lungnet.scoring.outputs.model_outputs` gets uint8 batches from the prepared store and normalises each with
`lungnet.data.transforms.Normalize.batch`, since 2026-12-07 into one result tensor reused from batch to batch
(``out``), and on a CPU a few images at a time (`lungnet.data.transforms.CPU_CHUNK_BYTES` of result per step). This
times that call per image, with a fresh result per batch and with the reused one, and the same two operations over
the whole batch at once into a reused result (``whole``: the call before it stepped through the images), at 224 px
for 3 and 1 channels and batch sizes 32 and 64 (``data.batch_size``'s default and evaluate's), in rounds that
interleave the three, in this process with glibc's allocator as a training or evaluate process has it
(`keep_large_buffers` only runs in loader workers). Between batches the bench frees and touches ``--between-mb`` of
other memory, standing in for the forward pass's activations (a resnet50's first stage alone is 100 MB for 32
images). CPU seconds of this process, one thread. Growth: linear in ``--batches``.
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


def whole_batch(norm, raw: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """``Normalize.batch`` before it stepped through the images: its two operations over the whole batch at once."""
    gain = norm._gain[255.0].view(1, -1, 1, 1)
    if out is None:
        out = torch.empty(torch.broadcast_shapes(raw.shape, gain.shape))
    torch.mul(raw, gain, out=out)
    return out.add_(norm._offset.view(1, -1, 1, 1))


def time_loop(norm, raw: torch.Tensor, batches: int, kind: str, between_mb: int) -> float:
    """CPU ms per image of ``batches`` calls on ``raw``: ``kind`` fresh (``norm.batch``, a new result each), reused
    (``norm.batch`` into one result) or whole (`whole_batch` into one result)."""
    out, spent = None, 0.0
    call = (lambda x, o: whole_batch(norm, x, o)) if kind == "whole" else norm.batch
    for _ in range(batches):
        start = time.process_time()
        result = call(raw, out)
        spent += time.process_time() - start
        out = None if kind == "fresh" else result
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
            times = {"fresh": [], "reused": [], "whole": []}
            time_loop(norm, raw, 2, "reused", args.between_mb)  # warm-up
            for _ in range(args.rounds):
                for kind in times:
                    times[kind].append(time_loop(norm, raw, args.batches, kind, args.between_mb))
            cases[f"{chans}ch_b{size}"] = times
            runs = {k: " / ".join(f"{t:.3f}" for t in v) for k, v in times.items()}
            medians = " vs ".join(f"{statistics.median(times[k]):.3f}" for k in ("fresh", "reused", "whole"))
            figures.append(
                {
                    "figure": f"Normalize.batch, {chans} channel(s), batch {size}, {side} px: CPU ms per image, a "
                    "fresh result per batch vs one reused (model_outputs since 2026-12-07) vs the two operations "
                    "over the whole batch into one reused result (the call before it stepped through the images)",
                    "value": f"{runs['fresh']} vs {runs['reused']} vs {runs['whole']} in {args.rounds} rounds "
                    f"(medians {medians})",
                }
            )
    return {"args": vars(args), "ms_per_image": cases, "figures": figures}


if __name__ == "__main__":
    main("normalise_batch", __doc__, add_arguments, run)
