"""Training throughput: model-only compute vs the full Trainer.fit loop on real data, in one run.

(a) a training step on synthetic tensors already on the device (the compute ceiling);
(b) ``Trainer.fit`` on a real DataModule (decode cache on), measured over whole epochs after a warm-up epoch.
The ratio (b)/(a) says whether the data pipeline starves the accelerator (target >= 0.90).

With ``--cpu-cache-epochs`` it also times CPU epochs of the same DataModule with and without the cache.

Examples:
    python bench/throughput.py --data-root ../shared/data/darkcovidnet --models densenet121 resnet50 \
        --batch-size 128 --precision bf16-mixed --workers 12            # on a GPU
    python bench/throughput.py --data-root ../shared/data/darkcovidnet --models resnet18 --device cpu \
        --batch-size 32 --image-size 224 --precision 32-true --cpu-cache-epochs 1 --workers 2
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from lungnet.data.datamodule import LungDataModule
from lungnet.module import LitClassifier


class _EpochTimer(pl.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self.images: list[int] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        self._t0, self._n = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._n += len(batch["image"])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._t0)
        self.images.append(self._n)


def model_only(name: str, args, device: str) -> float:
    """Images/s of forward + backward + optimiser step on tensors already on the device."""
    module = LitClassifier({"name": name, "in_chans": 3}, ["a", "b", "c"]).to(device)
    if args.channels_last:
        module = module.to(memory_format=torch.channels_last)
    model = torch.compile(module.model) if args.compile else module.model
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
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
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return args.steps * args.batch_size / (time.perf_counter() - t0)


def full_loop(name: str, args, device: str, cache: bool, epochs: int) -> dict:
    """Images/s of Trainer.fit over real data (the first epoch is warm-up and excluded when epochs > 1)."""
    module = LitClassifier(
        {"name": name, "in_chans": 3}, ["Covid-19", "No_findings", "Pneumonia"], optim={"lr": 1e-4, "scheduler": "none"}
    )
    data = {
        "source": args.source,
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
    dm = LungDataModule(data, module.spec, seed=0, augment=None)
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
    return {"images_per_s": imgs / secs, "epoch_s": timer.times, "fit_wall_s": total}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
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
        if args.cpu_cache_epochs:
            for cache in (False, True):
                entry[f"cpu_fit_cache_{cache}"] = full_loop(
                    name, args, "cpu", cache=cache, epochs=args.cpu_cache_epochs
                )
        results["models"][name] = entry
        print(json.dumps({name: entry}, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
