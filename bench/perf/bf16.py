"""CPU training speed under Lightning ``precision=32-true`` vs ``bf16-mixed``, interleaved so ratios survive load.

For each configuration (model, image size, batch, input channels) it runs ``Trainer.fit`` on in-memory synthetic
batches, once per precision per round, alternating which precision goes first, and times the training steps after
``--warmup`` steps. Each round records the load average next to its numbers; the verdict is the median over rounds
of the per-round bf16/fp32 ratio (both precisions of a round ran back to back, under about the same load).

    python -m bench.perf.bf16 --configs efficientnet_lite0:224:32:3 resnet18:64:64:1 --rounds 3 \
        --out bench/results/bf16_speed.json

The accuracy half of the question (paired preset runs under each precision) is run with ``train.py
trainer.precision=...``; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads collapse on a shared CPU

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from bench.common.cli import main  # noqa: E402
from lungnet.hardware import cpu_summary  # noqa: E402
from lungnet.train.module import LitClassifier  # noqa: E402

log = logging.getLogger("bench.bf16")
PRECISIONS = ("32-true", "bf16-mixed")


class _Synthetic(Dataset):
    """``n`` fixed random images (C, S, S) with labels, as the DataModule's dict batches."""

    def __init__(self, n: int, chans: int, size: int, classes: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, chans, size, size, generator=g)
        self.y = torch.randint(0, classes, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "target": self.y[i]}


class _StepTimer(pl.Callback):
    """Wall time and process CPU time (all threads) of each training step (batch start to batch end)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0, self._c0 = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self._t0)
        self.cpu.append(time.process_time() - self._c0)


def parse_config(text: str) -> dict:
    """``name:size:batch:chans`` -> dict."""
    name, size, batch, chans = text.split(":")
    return {"name": name, "size": int(size), "batch": int(batch), "chans": int(chans)}


def fit_speed(
    module: LitClassifier, loader: DataLoader, precision: str, warmup: int, steps: int
) -> tuple[float, float]:
    """Training images per wall second and per CPU second of ``Trainer.fit`` at ``precision``, over ``steps`` steps
    after ``warmup``. CPU seconds (all threads, OpenMP waiting passively) hardly depend on what else runs."""
    timer = _StepTimer()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        max_steps=warmup + steps,
        logger=False,
        enable_checkpointing=False,
        callbacks=[timer],
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=loader)
    n = loader.batch_size * steps
    return n / sum(timer.times[warmup:]), n / sum(timer.cpu[warmup:])


def bench_config(cfg: dict, rounds: int, warmup: int, steps: int) -> dict:
    """Interleaved rounds of both precisions for one configuration."""
    module = LitClassifier(
        {"name": cfg["name"], "in_chans": cfg["chans"]},
        ["a", "b"],
        optimizer={"_target_": "torch.optim.AdamW", "lr": 1e-3},
    )
    data = _Synthetic(cfg["batch"] * (warmup + steps), cfg["chans"], cfg["size"], 2)
    loader = DataLoader(data, batch_size=cfg["batch"], shuffle=False, num_workers=0)
    out = {"config": cfg, "rounds": []}
    for r in range(rounds):
        order = PRECISIONS if r % 2 == 0 else PRECISIONS[::-1]
        row = {"load_before": os.getloadavg()[0]}
        for precision in order:
            row[precision], row[f"{precision}_per_cpu_s"] = fit_speed(module, loader, precision, warmup, steps)
        row["load_after"] = os.getloadavg()[0]
        row["ratio"] = row["bf16-mixed"] / row["32-true"]
        row["cpu_ratio"] = row["bf16-mixed_per_cpu_s"] / row["32-true_per_cpu_s"]
        log.info("%s round %d: %s", cfg["name"], r, row)
        out["rounds"].append(row)
    keys = (*PRECISIONS, *(f"{p}_per_cpu_s" for p in PRECISIONS), "ratio", "cpu_ratio")
    for key in keys:
        out[f"median_{key}"] = statistics.median(row[key] for row in out["rounds"])
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The configurations (name:size:batch:chans), rounds, warm-up and timed steps, threads."""
    p.add_argument("--configs", nargs="+", default=["efficientnet_lite0:224:32:3", "resnet18:64:64:1"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)


def run(args: argparse.Namespace) -> dict:
    """Every configuration's interleaved rounds under both precisions; the table printed."""
    torch.set_num_threads(args.threads)
    result = {"cpu": cpu_summary(), "torch": torch.__version__, "threads": args.threads, "configs": []}
    for text in args.configs:
        result["configs"].append(bench_config(parse_config(text), args.rounds, args.warmup, args.steps))
    print(
        "| model | px | batch | chans | fp32 img/s | bf16 img/s | bf16/fp32 wall (rounds) | fp32 img/CPU-s | "
        "bf16 img/CPU-s | bf16/fp32 CPU time (rounds) | load avg (before-after each round) |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---|---|")
    for c in result["configs"]:
        cfg, loads = c["config"], [f"{r['load_before']:.1f}-{r['load_after']:.1f}" for r in c["rounds"]]
        ratios = ", ".join(f"{r['ratio']:.2f}" for r in c["rounds"])
        cpu_ratios = ", ".join(f"{r['cpu_ratio']:.2f}" for r in c["rounds"])
        print(
            f"| {cfg['name']} | {cfg['size']} | {cfg['batch']} | {cfg['chans']} | {c['median_32-true']:.1f} | "
            f"{c['median_bf16-mixed']:.1f} | {c['median_ratio']:.2f}x ({ratios}) | "
            f"{c['median_32-true_per_cpu_s']:.1f} | {c['median_bf16-mixed_per_cpu_s']:.1f} | "
            f"{c['median_cpu_ratio']:.2f}x ({cpu_ratios}) | {', '.join(loads)} |"
        )
    return result


if __name__ == "__main__":
    main("bf16", __doc__, add_arguments, run)
