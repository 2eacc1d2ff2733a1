"""The finish's work after scoring, measured at full NIH size rather than extrapolated (issue #27 §3).

`lungnet.evaluation.after_training.finish_training` scores val, test and the OOD gate's training sample, then
calibrates on val (bootstrap intervals, temperature, operating point, conformal scores, the OOD gate's fit and
threshold) and writes its reports. The scoring is the model and the loader (`bench.perf.scale` times them); this
bench times the rest, whose cost grows with the split sizes and the feature width but has a large constant part at
the sizes `bench.perf.scale` can run (1k-16k images), so an extrapolation from there misleads.

It trains simple_cnn on the real NIH sample of ``../shared/data/nih`` for two batches (a real nih14 checkpoint and
config), then calls ``finish_training`` with synthetic outputs of the sizes of NIH ChestX-ray14 (by default its
official split: 25,596 test images; 86,524 train+val, 15 % of them val, ``ood.fit_max`` of the rest scored) and
``--feature-dim`` pooled features (2048: resnet50/152; 1024: densenet121) plus the gate's 16x16 thumbnail. The data
module is a stand-in holding the 112,120-row table (path, patient: about 3.6 images per patient, as NIH's 30,805
patients) and the splits' sizes: nothing is read from disk. Logits follow the findings (AUROC about 0.8), the
features a low-rank class structure. CPU seconds of this process (``OMP_NUM_THREADS`` as set; numpy's BLAS threads
count), the whole call and its named parts. With ``--ranks N`` the finish runs as after an N-process training: N gloo
processes each hold a contiguous share of test and of the gate's sample, test's shares are gathered and the sample's
gate statistics summed (`lungnet.evaluation.sharded`), rank 0 reuses val and finishes; the
figure is rank 0's CPU from its first gather to the end (each rank's is in the record).

    python -m bench.perf.finish_rest
    python -m bench.perf.finish_rest --ranks 2 --out /tmp/finish_rest_2.json
    python -m bench.perf.finish_rest --feature-dim 1024 --resamples 1000 --train-overrides ood.fit_max=5000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from bench.common.cli import ROOT, main

NIH = ROOT.parent / "shared/data/nih"
NIH_TEST, NIH_TRAINVAL = 25_596, 86_524  # of NIH ChestX-ray14's 112,120 images
SQUARES, AXES = "gate squares", "gate axes"  # on a CUDA device since lungnet.scoring.scatter.accelerator
PARTS = {  # what is timed inside the call: module attribute -> part name
    "lungnet.scoring.stats.bootstrap_ci": "bootstrap intervals",
    "lungnet.evaluation.pipeline.calibration": "temperature",
    "lungnet.evaluation.pipeline.operating_point": "operating point",
    "lungnet.artifacts.decision.DecisionRecord.prediction_sets": "prediction sets",
    "lungnet.evaluation.decisions.coverage": "conformal coverage",
    "lungnet.evaluation.decisions.fit_gate": "OOD gate fit",
    "lungnet.evaluation.decisions.add_decisions": "decisions (with the gate)",
    "lungnet.evaluation.after_training.split_metrics": "split metrics and predictions csv",
    "lungnet.evaluation.after_training.write_model_card": "model card",
    "lungnet.scoring.scatter.squares_about": SQUARES,
    "lungnet.scoring.ood.leading_axes": AXES,
}


def cpu() -> float:
    """CPU seconds of this process (all its threads)."""
    return time.process_time()


def tiny_checkpoint(work: Path, overrides: list[str]) -> tuple[Path, Path]:
    """Trains simple_cnn on the real NIH sample for two batches at 32 px; its best checkpoint and run directory."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LUNGNET_CACHE_DIR": str(work / "store")}
    env["LUNGNET_MANIFEST_DIR"] = str(work / "manifests")
    argv = [sys.executable, str(ROOT / "train.py"), "data=nih14", f"data.root={NIH}", "model=simple_cnn", "trainer=cpu"]
    argv += ["data.image_size=32", "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "data.num_workers=0"]
    argv += ["trainer.enable_progress_bar=false", "bootstrap.resamples=10", f"paths.log_dir={work / 'runs'}"]
    argv += overrides
    with open(work / "train.log", "w") as fh:
        done = subprocess.run(argv, env=env, stdout=fh, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the checkpoint's training failed (exit {done.returncode}): {work / 'train.log'}")
    ckpt = next((work / "runs").rglob("best.ckpt"))
    return ckpt, ckpt.parent.parent


def sizes(args) -> dict[str, int]:
    """Images per split: NIH's official test list, val a share of train+val, the gate's sample ``fit_max``."""
    val = int(round(args.trainval * args.val_fraction))
    return {"test": args.test, "val": val, "train": args.trainval - val}


def stand_in_data(counts: dict[str, int], root: str) -> SimpleNamespace:
    """The data module the finish reads: the table (path, patient, split) and each split's size."""
    rows = [(name, i) for name, n in counts.items() for i in range(n)]
    table = pd.DataFrame(
        {
            "path": [f"{root}/images/{name}_{i:06d}.png" for name, i in rows],
            "patient": [f"{k * 10 // 36:06d}" for k in range(len(rows))],  # about 3.6 images per patient
            "split": [name for name, _ in rows],
        }
    )
    datasets = {name: range(n) for name, n in counts.items()}
    source = SimpleNamespace(root=root, name="nih14")
    return SimpleNamespace(table=table, datasets=datasets, source=source, image_size=224, report={})


def synthetic(name: str, paths: list[str], labels: int, multilabel: bool, width: int, rng, features: bool):
    """Outputs of one split: NIH-like finding rates (single-label: classes drawn evenly), logits that follow the
    truth, low-rank pooled features of ``width`` plus a thumbnail."""
    from lungnet.scoring.ood import THUMB
    from lungnet.scoring.outputs import Outputs

    n = len(paths)
    if multilabel:  # NIH's findings range from about 0.2 % (hernia) to 18 % (infiltration)
        truth = (rng.random((n, labels)) < np.linspace(0.005, 0.18, labels)).astype(np.float32)
        targets = truth
    else:
        targets = rng.integers(0, labels, n)
        truth = np.eye(labels, dtype=np.float32)[targets]
    logits = (1.2 * truth + rng.normal(0.0, 1.0, (n, labels)) - 2.5).astype(np.float32)
    probs = 1.0 / (1.0 + np.exp(-logits)) if multilabel else np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    feats = None
    if features:
        basis = np.random.default_rng(1).normal(size=(32, width)).astype(np.float32)
        pooled = rng.normal(size=(n, 32)).astype(np.float32) @ basis + rng.normal(0, 0.3, (n, width)).astype(np.float32)
        feats = np.concatenate([np.maximum(pooled, 0), rng.normal(size=(n, THUMB * THUMB)).astype(np.float32)], 1)
    return Outputs(name, probs.astype(np.float32), targets, paths, logits, feats)


def timed_parts(seconds: dict[str, float]) -> list:
    """Wraps the functions of `PARTS` so that each call adds its CPU seconds to ``seconds``; the undo list."""
    import importlib

    undo = []
    for dotted, part in PARTS.items():
        owner_name, attr = dotted.rsplit(".", 1)
        module_name, last = owner_name.rsplit(".", 1)
        if last[0].isupper():  # a method of a class
            module = getattr(importlib.import_module(module_name), last)
        else:
            module = importlib.import_module(owner_name)
        fn = getattr(module, attr)

        def wrapped(*a, _fn=fn, _part=part, **k):
            start = cpu()
            try:
                return _fn(*a, **k)
            finally:
                seconds[_part] = seconds.get(_part, 0.0) + cpu() - start

        setattr(module, attr, wrapped)
        undo.append((module, attr, fn))
    return undo


def stand_in(ckpt: Path, run: Path, args):
    """The train config, the loaded checkpoint (its decision file removed), the stand-in data module and the
    synthetic outputs of every split (the same on every rank: seeded)."""
    from omegaconf import OmegaConf

    from lungnet.artifacts.checkpoint import load_model
    from lungnet.artifacts.paths import decision_path

    cfg = OmegaConf.load(run / "config.yaml")
    cfg.bootstrap.resamples = args.resamples
    loaded = load_model(ckpt)
    decision_path(ckpt).unlink(missing_ok=True)  # the tiny training's: a finish after training fits its own
    counts = sizes(args)
    dm = stand_in_data(counts, str(run / "data"))
    rng = np.random.default_rng(args.seed)
    by_split = dm.table.groupby("split", sort=False)["path"]
    fit_max = int(cfg.ood.fit_max)
    labels, multilabel, width = len(loaded.labels), loaded.multilabel, args.feature_dim
    scored = {}
    for name, paths in by_split:
        kept = list(paths)[: fit_max if name == "train" else None]  # the gate's sample of train
        scored[name] = synthetic(name, kept, labels, multilabel, width, rng, name != "test")
    return cfg, loaded, dm, scored, counts


def timed_finish(cfg, ckpt: Path, dm, run: Path, loaded, scored: dict) -> tuple[dict, dict]:
    """``finish_training`` on ``scored``: its CPU and wall seconds, and its parts' CPU seconds."""
    from lungnet.evaluation import after_training

    seconds: dict[str, float] = {}
    undo = timed_parts(seconds)
    out_dir = Path(tempfile.mkdtemp(prefix="finish-rest-", dir=run))
    start, wall = cpu(), time.perf_counter()
    try:
        after_training.finish_training(cfg, ckpt, dm, out_dir, progress_bar=False, scored=scored, loaded=loaded)
    finally:
        for module, attr, fn in undo:
            setattr(module, attr, fn)
    return {"cpu_s": cpu() - start, "wall_s": time.perf_counter() - wall}, seconds


def finish_rest(ckpt: Path, run: Path, args) -> dict:
    """``finish_training`` on the synthetic outputs of the NIH sizes, its CPU seconds and its parts'."""
    cfg, loaded, dm, scored, counts = stand_in(ckpt, run, args)
    total, seconds = timed_finish(cfg, ckpt, dm, run, loaded, scored)
    images = {k: len(v.paths) for k, v in scored.items()}
    return {"images": images, "train_split": counts["train"], "finish_rest": total, "parts_cpu_s": seconds}


def share(out, rank: int, world: int):
    """This rank's contiguous share of one split's outputs (`lungnet.evaluation.sharded.shard`)."""
    from lungnet.evaluation.sharded import shard
    from lungnet.scoring.outputs import Outputs

    rows = shard(len(out.paths), rank, world)
    cut = slice(rows.start, rows.stop)
    feats = out.features[cut] if out.features is not None else None
    return Outputs(out.name, out.probs[cut], out.targets[cut], out.paths[cut], out.logits[cut], feats)


def rank_finish(rank: int, world: int, ckpt: Path, run: Path, args, port: int, out: Path) -> None:
    """One gloo rank of a finish after a ``world``-process training: its shares of test and of the gate's sample
    gathered (`lungnet.evaluation.sharded`: outputs, statistics), val reused on rank 0 (the validation pass's), then
    rank 0 finishes. Writes this rank's CPU seconds from the first gather to the end to ``out/rank<k>.json``."""
    import torch.distributed as dist

    from lungnet.evaluation.sharded import gathered_outputs, reduced_scatters

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    cfg, loaded, dm, scored, counts = stand_in(ckpt, run, args)  # rank 0 writes the decision file after the barrier
    dist.barrier()
    start = cpu()
    test = gathered_outputs(share(scored["test"], rank, world), "test")
    classes = 1 if loaded.multilabel else len(loaded.labels)
    sample = reduced_scatters(share(scored["train"], rank, world), classes, "cpu")
    result = {"rank": rank, "gather_cpu_s": cpu() - start}
    if rank == 0:
        total, seconds = timed_finish(cfg, ckpt, dm, run, loaded, {"val": scored["val"], "test": test, "train": sample})
        result.update(finish_rest=total, parts_cpu_s=seconds, images={k: len(v.paths) for k, v in scored.items()})
        result["train_split"] = counts["train"]
    result["cpu_s"] = cpu() - start
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def finish_rest_ranks(ckpt: Path, run: Path, args) -> dict:
    """`rank_finish` in ``args.ranks`` gloo processes: rank 0's CPU seconds (from the first gather on) are the rest
    a multi-process training's rank 0 does after scoring; the other ranks' are their shares of the gate's
    statistics and the gathers."""
    import socket

    import torch.multiprocessing as mp

    out = Path(tempfile.mkdtemp(prefix="ranks-", dir=run))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(rank_finish, args=(args.ranks, ckpt, run, args, port, out), nprocs=args.ranks)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(args.ranks)]
    head = ranks[0]
    rest = {"cpu_s": head["cpu_s"], "finish_training": head["finish_rest"]}
    keep = ("images", "train_split", "parts_cpu_s")
    return {**{k: head[k] for k in keep}, "world": args.ranks, "finish_rest": rest, "ranks": ranks}


def over_epoch(result: dict, scale_record: Path, loader_record: Path | None = None) -> dict:
    """The finish without the model over one epoch's loading at these sizes: the finish's own batches and one
    epoch of the training split at the CPU per image `bench.perf.scale` measured from the prepared store (its largest
    size; ``finish_loading``, ``epoch_store``), plus this bench's rest; 8 ranks: each loads 1/8 of the epoch and
    scores 1/8 of the finish's images, rank 0 alone does the rest (as measured in one process); under ``world``
    ranks (``--ranks``): rank 0's measured rest with 1/``world`` of the loading and of the epoch.

    With ``loader_record`` (`bench.perf.loader` with the modes ``eval_bytes`` and ``store``, one model's channels)
    both per-image costs come from that one run instead: the finish's loading is ``eval_bytes`` without its
    per-batch normalisation (a GPU does that), ``1rank_cpu_only`` adds it back (a CPU-only machine), and
    ``1rank_gpu`` also leaves out the parts a CUDA device computes since `lungnet.scoring.scatter.accelerator` (the
    gate's squares and leading axes, timed here on the host): the host's CPU on a GPU machine, the device's own
    time not included."""
    if loader_record is not None:
        rec = json.loads(loader_record.read_text())
        modes = {r["mode"]: r for r in rec["result"]["results"]}
        scoring = modes["eval_bytes"]
        per_normalised = scoring["device_step_cpu_ms_per_image"] / 1e3
        per_loaded = scoring["cpu_ms_per_image"] / 1e3 - per_normalised
        per_epoch_image = modes["store"]["cpu_ms_per_image"] / 1e3
        source = {"loader_record": {"path": str(loader_record), "machine": rec["machine"], "date": rec["date"]}}
    else:
        rec = json.loads(scale_record.read_text())
        results = rec["result"]["results"]
        n = max(results, key=int)
        got = results[n]
        scored = sum(got["finish_scoring"].get(f"{s}_images", 0) for s in ("val", "test", "train", "probe"))
        per_loaded, per_normalised = got["finish_loading"]["cpu_s"] / scored, None
        per_epoch_image = got["epoch_store"]["cpu_s"] / int(n)  # every image of the set through the training dataset
        source = {"scale_record": {"path": str(scale_record), "size": int(n), "machine": rec["machine"]}}
        source["scale_record"]["date"] = rec["date"]
    images = result["images"]
    finish_images = images["test"] + images["train"] + 32  # val: the validation pass's; one checking batch
    loading, epoch = per_loaded * finish_images, per_epoch_image * result["train_split"]
    rest, world = result["finish_rest"]["cpu_s"], int(result.get("world", 1))
    ratios = {"1rank": (loading + rest) / epoch, "8rank": (loading / 8 + rest) / (epoch / 8)}
    if per_normalised is not None:
        ratios["1rank_cpu_only"] = (loading + per_normalised * finish_images + rest) / epoch
        on_device = sum(result.get("parts_cpu_s", {}).get(part, 0.0) for part in (SQUARES, AXES))
        ratios["1rank_gpu"] = (loading + rest - on_device) / epoch
    if world > 1:
        ratios = {f"{world}rank": (loading / world + rest) / (epoch / world)}
    return {
        **source,
        "loading_ms_per_image": per_loaded * 1000,
        "epoch_ms_per_image": per_epoch_image * 1000,
        "loading_cpu_s": loading,
        "epoch_cpu_s": epoch,
        **ratios,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Split sizes, feature width, resamples, the checkpoint training's extra overrides."""
    parser.add_argument("--test", type=int, default=NIH_TEST, help="test images (NIH's official test list)")
    parser.add_argument("--trainval", type=int, default=NIH_TRAINVAL, help="train+val images (NIH's list)")
    parser.add_argument("--val-fraction", type=float, default=0.15, help="val's share of NIH's train+val list")
    parser.add_argument("--feature-dim", type=int, default=2048, help="pooled feature width (resnet50/152: 2048)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap.resamples (training's default)")
    parser.add_argument("--ranks", type=int, default=1, help="gloo processes of the finish (rank 0's rest is timed)")
    parser.add_argument("--train-overrides", nargs="*", default=[], help="overrides of the checkpoint's training")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument(
        "--loader-record",
        type=Path,
        default=None,
        help="bench.perf.loader's record (modes eval_bytes and store) whose per-image costs give the ratio instead",
    )
    parser.add_argument(
        "--scale-record",
        type=Path,
        default=ROOT / "bench/results/scale_finish.json",
        help="bench.perf.scale's record whose per-image loading costs give the ratio to an epoch",
    )


def run(args: argparse.Namespace) -> dict:
    """Trains the checkpoint, times the finish's rest (in one process, or on rank 0 of ``--ranks``), states the
    headline."""
    work = Path(args.work or tempfile.mkdtemp(prefix="finish-rest-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt, run_dir = tiny_checkpoint(work, list(args.train_overrides))
    result = finish_rest(ckpt, run_dir, args) if args.ranks == 1 else finish_rest_ranks(ckpt, run_dir, args)
    result["threads"] = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    result["over_epoch"] = ratio = over_epoch(result, args.scale_record, args.loader_record)
    parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(result["parts_cpu_s"].items(), key=lambda kv: -kv[1]))
    where = "one process" if args.ranks == 1 else f"rank 0 of {args.ranks}, from its first gather"
    rest = result["finish_rest"]["cpu_s"]
    if args.ranks == 1:
        ratio_text = f"{ratio['1rank']:.3f}x on one rank; {ratio['8rank']:.2f}x of a rank's share under 8 ranks"
        if "1rank_cpu_only" in ratio:
            ratio_text += f"; {ratio['1rank_cpu_only']:.3f}x on one rank without a GPU (batches normalised on the CPU)"
            ratio_text += f"; {ratio['1rank_gpu']:.3f}x with the gate's squares and axes on the GPU too (host CPU only)"
    else:
        ratio_text = f"{ratio[f'{args.ranks}rank']:.3f}x of a rank's share under {args.ranks} ranks"
    result["figures"] = [
        {
            "figure": f"finish after scoring at NIH size ({json.dumps(result['images'])}, {args.feature_dim} features, "
            f"{args.resamples} resamples): CPU s of {where}",
            "value": f"{rest:.1f} s ({parts})",
        },
        {
            "figure": "finish without the model over one epoch's loading from the store, at NIH size",
            "value": f"({ratio['loading_cpu_s']:.1f} s loading + {rest:.1f} s rest) / {ratio['epoch_cpu_s']:.0f} s = "
            + ratio_text,
        },
    ]
    return result


if __name__ == "__main__":
    main("finish_rest", __doc__, add_arguments, run)
