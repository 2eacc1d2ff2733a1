"""Training throughput: model-only compute vs the full Trainer.fit loop on real data, in one run.

(a) a training step on synthetic tensors already on the device (the compute ceiling);
(b) ``Trainer.fit`` on a real DataModule (decode cache on), measured over whole epochs after a warm-up epoch.
The ratio (b)/(a) says whether the data pipeline starves the accelerator (target >= 0.90).

With ``--cpu-cache-epochs`` it also times CPU epochs of the same DataModule with and without the cache.

On the CPU (``--device cpu``) it runs (a) and (b) (uncached, then cached) interleaved as a, b, a, b, a, and
compares each (b) with the mean of the two (a) runs around it, so a machine shared with other work shifts both
alike. Every measurement also records the CPU seconds of the process and its data-loader workers (read from
/proc), whose ratio hardly depends on the load: (a) CPU-s per image / (b) CPU-s per image is the ratio an idle
machine whose cores are all busy with training would show.

Examples:
    python -m bench.perf.throughput --data-root ../shared/data/darkcovidnet --models densenet121 resnet50 \
        --batch-size 128 --precision bf16-mixed --workers 12            # on a GPU
    python -m bench.perf.throughput --data-root /tmp/synth --source synthetic --data-options n_per_class=500 \
        size=256 --models resnet50 --augment xray --gpu-augment --workers 12   # on a GPU, no data needed (gpu_check.sh)
    python -m bench.perf.throughput --data-root ../shared/data/darkcovidnet --models resnet18 --device cpu \
        --batch-size 32 --image-size 224 --precision 32-true --cpu-cache-epochs 1 --workers 2
    python -m bench.perf.throughput --data-root ../shared/data/darkcovidnet --device cpu --precision 32-true \
        --workers 2 --augment xray --epochs 2 --configs efficientnet_lite0:224:32:3 resnet18:64:64:1   # CPU (a) vs (b)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads collapse on a shared CPU

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from bench.common.cli import ROOT, main  # noqa: E402
from bench.common.proc_cpu import tree_cpu_seconds  # noqa: E402
from lungnet.data.datamodule import LungDataModule  # noqa: E402
from lungnet.data.sources import create_source  # noqa: E402
from lungnet.hardware import cpu_summary  # noqa: E402
from lungnet.train.module import LitClassifier  # noqa: E402

STEADY_SKIP = 3  # batches of each epoch before the steady-state clock starts (the workers' first batches)


class _EpochTimer(pl.Callback):
    """Whole epochs (wall, CPU of the process tree, images), and each epoch's steady state: from the end of its
    ``STEADY_SKIP``-th batch on, leaving out the wait for the workers' first batches (a large share of a short epoch
    on a fast GPU)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.images: list[int] = []
        self.cpu: list[float] = []
        self.steady: list[tuple[int, float]] = []  # (images, seconds) after the first STEADY_SKIP batches

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        self._t0, self._n, self._c0 = time.perf_counter(), 0, tree_cpu_seconds()
        self._steady_t0, self._steady_n = None, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._n += len(batch["image"])
        if self._steady_t0 is not None:
            self._steady_n += len(batch["image"])
        elif batch_idx == STEADY_SKIP - 1:
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize()
            self._steady_t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.times.append(now - self._t0)
        self.images.append(self._n)
        self.cpu.append(tree_cpu_seconds() - self._c0)
        if self._steady_t0 is not None and self._steady_n:
            self.steady.append((self._steady_n, now - self._steady_t0))


def model_only(name: str, args, device: str, chans: int = 3) -> float | dict:
    """Images/s of forward + backward + optimiser step on tensors already on the device.

    On the CPU: ``{"images_per_s", "images_per_cpu_s"}`` (CPU seconds of this process, all threads).
    """
    module = LitClassifier({"name": name, "in_chans": chans}, ["a", "b", "c"]).to(device)
    if args.channels_last:
        module = module.to(memory_format=torch.channels_last)
    model = torch.compile(module.model) if args.compile else module.model
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    x = torch.randn(args.batch_size, chans, args.image_size, args.image_size, device=device)
    if args.channels_last:
        x = x.to(memory_format=torch.channels_last)
    y = torch.randint(0, 3, (args.batch_size,), device=device)
    dtype = torch.bfloat16 if "bf16" in args.precision else torch.float16 if "16" in args.precision else None

    def step() -> None:
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(args.warmup_steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), tree_cpu_seconds()
    for _ in range(args.steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    n = args.steps * args.batch_size
    if device == "cpu":
        return {"images_per_s": n / (time.perf_counter() - t0), "images_per_cpu_s": n / (tree_cpu_seconds() - c0)}
    return n / (time.perf_counter() - t0)


def full_loop(name: str, args, device: str, cache: bool, epochs: int, chans: int = 3) -> dict:
    """Images/s of Trainer.fit over real data (the first epoch is warm-up and excluded when epochs > 1)."""
    steps = augment_steps(args.augment)
    gpu_augment = bool(args.gpu_augment)
    options = data_options(args.data_options)
    module = LitClassifier(
        {"name": name, "in_chans": chans},
        list(create_source(args.source, args.data_root, **options).labels),
        optimizer={"_target_": "torch.optim.AdamW", "lr": 1e-4},
        data={"gpu_augment": gpu_augment},
        extra={"augment": {"train": steps}, "seed": 0},
    )
    data = {
        "source": args.source,
        "options": options,
        "gpu_augment": gpu_augment,
        "root": args.data_root,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "num_workers": args.workers,
        "pin_memory": device != "cpu",
        "persistent_workers": args.workers > 0,
        "val_fraction": 0.2,
        "verify": False,
        "cache": cache,
        "cache_dir": args.cache_dir,
        "intensity_check": False,
    }
    dm = LungDataModule(data, module.spec, seed=0, augment=steps, owns_data=True)  # as training: its own data
    timer = _EpochTimer()
    trainer = pl.Trainer(
        accelerator="gpu" if device != "cpu" else "cpu",
        devices=1,
        precision=args.precision,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        callbacks=[timer],
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    if args.channels_last:
        module.use_channels_last()  # weights and every batch, as train.py channels_last=true
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    total = time.perf_counter() - t0
    steady = slice(1, None) if epochs > 1 else slice(None)
    imgs = sum(timer.images[steady])
    secs = sum(timer.times[steady])
    within = timer.steady[1:] if len(timer.steady) > 1 else timer.steady
    return {
        "images_per_s": imgs / secs,
        "steady_images_per_s": sum(n for n, _ in within) / sum(t for _, t in within) if within else None,
        "images_per_cpu_s": imgs / sum(timer.cpu[steady]),
        "epoch_s": timer.times,
        "epoch_cpu_s": timer.cpu,
        "fit_wall_s": total,
    }


def data_options(pairs: list[str] | None) -> dict:
    """``key=value`` pairs (values parsed as YAML) as the data source's ``data.options``."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--data-options: '{pair}' is not key=value")
        out[key] = yaml.safe_load(value)
    return out


def augment_steps(name: str | None) -> list | None:
    """The ``train`` steps of ``conf/augment/<name>.yaml`` (None: no augmentation)."""
    if not name or name == "none":
        return None
    return yaml.safe_load((ROOT / "conf" / "augment" / f"{name}.yaml").read_text())["train"]


def cpu_pipeline_ratio(cfg: str, args) -> dict:
    """(a) model-only vs (b) Trainer.fit uncached and cached on the CPU, interleaved a, b, a, b, a.

    Args:
        cfg: ``name:size:batch:chans``.
    """
    name, size, batch, chans = cfg.split(":")
    run = argparse.Namespace(**{**vars(args), "image_size": int(size), "batch_size": int(batch)})
    chans = int(chans)
    out: dict = {"config": cfg, "load": [os.getloadavg()[0]], "a": []}
    out["a"].append(model_only(name, run, "cpu", chans))
    for cache in (False, True):
        out[f"b_cache_{cache}"] = full_loop(name, run, "cpu", cache=cache, epochs=args.epochs, chans=chans)
        out["a"].append(model_only(name, run, "cpu", chans))
        out["load"].append(os.getloadavg()[0])
        b, around = out[f"b_cache_{cache}"], out["a"][-2:]
        for key in ("images_per_s", "images_per_cpu_s"):
            out[f"ratio_cache_{cache}_{key}"] = b[key] / statistics.mean(a[key] for a in around)
    return out


def cpu_markdown(rows: list[dict], args) -> str:
    """The CPU (a)/(b) table."""
    lines = [
        "| model | (a) model-only img/s | (b) uncached img/s (epoch s) | (b)/(a) | CPU-time ratio | "
        "(b) cached img/s (epoch s) | (b)/(a) | CPU-time ratio | load avg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        a = " / ".join(f"{x['images_per_s']:.1f}" for x in r["a"])
        cells = [r["config"], a]
        for cache in (False, True):
            b = r[f"b_cache_{cache}"]
            epochs = ", ".join(f"{t:.1f}" for t in b["epoch_s"])
            cells += [
                f"{b['images_per_s']:.1f} ({epochs})",
                f"{r[f'ratio_cache_{cache}_images_per_s']:.2f}",
                f"{r[f'ratio_cache_{cache}_images_per_cpu_s']:.2f}",
            ]
        cells.append(", ".join(f"{x:.1f}" for x in r["load"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The data, the models, the device and precision, the loader, and the CPU (a)/(b) configurations."""
    p.add_argument("--data-root", required=True)
    p.add_argument("--source", default="darkcovidnet")
    p.add_argument("--models", nargs="+", default=["densenet121", "resnet50"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--precision", default="bf16-mixed")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup-steps", type=int, default=5)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "lungnet-bench-cache"))
    p.add_argument("--cpu-cache-epochs", type=int, default=0, help="also time CPU epochs with/without cache")
    p.add_argument("--augment", default=None, help="conf/augment/<name>.yaml for the training loader")
    p.add_argument("--gpu-augment", action="store_true", help="data.gpu_augment: augment batches on the device")
    p.add_argument(
        "--data-options", nargs="*", default=[], help="data.options as key=value (synthetic: n_per_class=500)"
    )
    p.add_argument(
        "--configs", nargs="*", default=[], help="CPU mode: name:size:batch:chans, e.g. efficientnet_lite0:224:32:3"
    )


def run(args: argparse.Namespace) -> dict:
    """CPU mode with ``--configs``: the interleaved (a)/(b) rows; otherwise per model the model-only rate, the fit
    and their ratio (on a GPU) and the CPU cache epochs."""
    if args.device == "cpu" and args.configs:
        rows = [cpu_pipeline_ratio(cfg, args) for cfg in args.configs]
        print(cpu_markdown(rows, args))
        return {"cpu": cpu_summary(), "args": vars(args), "rows": rows}
    torch.backends.cudnn.benchmark = True
    results = {
        "device": torch.cuda.get_device_name() if args.device != "cpu" else platform.processor() or "cpu",
        "args": vars(args),
        "models": {},
    }
    for name in args.models:
        entry: dict = {}
        if args.device != "cpu":
            entry["model_only_images_per_s"] = model_only(name, args, args.device)
            entry["fit"] = full_loop(name, args, args.device, cache=True, epochs=args.epochs)
            entry["ratio"] = entry["fit"]["images_per_s"] / entry["model_only_images_per_s"]
            if entry["fit"]["steady_images_per_s"]:  # within epochs, after each epoch's first batches
                entry["ratio_steady"] = entry["fit"]["steady_images_per_s"] / entry["model_only_images_per_s"]
        if args.cpu_cache_epochs:
            for cache in (False, True):
                entry[f"cpu_fit_cache_{cache}"] = full_loop(
                    name, args, "cpu", cache=cache, epochs=args.cpu_cache_epochs
                )
        results["models"][name] = entry
        print(json.dumps({name: entry}, indent=2))
    return results


if __name__ == "__main__":
    main("throughput", __doc__, add_arguments, run)
