"""The scoring after a multi-process (DDP) training, shared by its ranks (issue #27 §3).

Every rank loads the selected checkpoint and scores a contiguous shard of each split the finish scores (val with the
OOD gate's inputs, test, the gate's training sample: `finish_requests`); `torch.distributed.gather_object` brings the
shards to rank 0 in the split's order (of the gate's training sample only its statistics, summed across the ranks:
`reduced_scatters`), where `lungnet.evaluation.after_training.finish_training`
continues with the same outputs a single process computes (`lungnet.evaluation.pipeline.Evaluation.outputs` takes
them) and the same gate to float32 rounding. No sampler padding: the shards partition each split, each image scored
once.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Subset

from lungnet.artifacts.checkpoint import LoadedModel
from lungnet.data.datamodule import LungDataModule
from lungnet.evaluation.after_training import finish_splits
from lungnet.evaluation.decisions import training_sample
from lungnet.scoring.gate_inputs import GateScatters, split_inputs
from lungnet.scoring.outputs import Outputs, model_outputs
from lungnet.scoring.scatter import Scatter, accelerator, class_sums, squares_about, squares_on

log = logging.getLogger(__name__)


def world_size() -> int:
    """The number of processes of the initialised default process group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def agreed_path(path: Path | None) -> Path | None:
    """Rank 0's ``path`` on every rank (None: there is nothing to score), once every rank got here: the file rank 0
    wrote is complete before any other rank reads it."""
    dist.barrier()
    box = [str(path) if path is not None else None]
    dist.broadcast_object_list(box, src=0)
    return Path(box[0]) if box[0] is not None else None


def agreed_flag(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank."""
    box = [bool(flag)]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def shard(n: int, rank: int, world: int) -> range:
    """The contiguous share of ``rank`` among ``world`` ranks of ``n`` items (sizes differ by at most one)."""
    return range(n * rank // world, n * (rank + 1) // world)


def finish_requests(cfg, dm: LungDataModule, seed: int, skip: set[str]) -> list[tuple[str, str, bool]]:
    """What `lungnet.evaluation.after_training.finish_training` scores (`finish_splits`), as ``(dataset key, split
    name, features)``, less the split names in ``skip`` (val, reused from the last validation pass)."""
    requests = []
    for name in finish_splits(cfg, dm):
        if name == "train":  # the gate's training sample
            requests.append((training_sample(dm, int(cfg.ood.fit_max), seed)[0], name, True))
        elif name not in skip:
            requests.append((name, name, name == "val"))
    return requests


def joined(parts: list[Outputs], name: str) -> Outputs:
    """The ranks' shards in rank order, as one split's outputs."""
    parts = [p for p in parts if len(p.paths)] or parts[:1]  # a rank with no image adds nothing (nor a dtype)
    feats = [p.features for p in parts if p.features is not None]
    return Outputs(
        name,
        np.concatenate([p.probs for p in parts]),
        np.concatenate([p.targets for p in parts]),
        [path for p in parts for path in p.paths],
        np.concatenate([p.logits for p in parts]),
        np.concatenate(feats) if feats else None,
    )


def score_share(loaded, dm: LungDataModule, key: str, name: str, features: bool, device) -> Outputs:
    """This rank's contiguous share of ``dm.datasets[key]``, scored (empty when there are fewer images than ranks)."""
    rank, world = dist.get_rank(), world_size()
    dataset = dm.datasets[key]
    share = shard(len(dataset), rank, world)
    part_key = f"{key}:shard{rank}of{world}"
    if len(share):
        dm.datasets[part_key] = Subset(dataset, share)
        try:
            desc = f"Predicting {name} (rank {rank})"
            part = model_outputs(loaded.model, dm.loader(part_key), loaded.multilabel, device, desc, features, name)
        finally:
            del dm.datasets[part_key]
    else:
        empty = np.zeros((0, len(loaded.labels)), np.float32)
        part = Outputs(name, empty, empty if loaded.multilabel else np.zeros(0, np.int64), [], empty)
    log.info("Scored %d of %d %s images on rank %d of %d", len(part.paths), len(dataset), name, rank, world)
    return part


def shard_outputs(loaded, dm: LungDataModule, key: str, name: str, features: bool, device) -> Outputs | None:
    """This rank's shard of ``dm.datasets[key]`` scored, gathered on rank 0: the whole split's outputs there, None on
    the other ranks."""
    return gathered_outputs(score_share(loaded, dm, key, name, features, device), name)


def gathered_outputs(part: Outputs, name: str) -> Outputs | None:
    """Every rank's ``part`` in rank order, joined on rank 0 (None on the other ranks)."""
    parts: list[Outputs | None] | None = [None] * world_size() if dist.get_rank() == 0 else None
    dist.gather_object(part, parts, dst=0)
    return joined(parts, name) if parts is not None else None  # type: ignore[arg-type]


def shard_scatters(loaded, dm: LungDataModule, key: str, device) -> GateScatters | None:
    """The OOD gate's statistics of its training sample, each rank scoring its shard (`reduced_scatters`): on rank
    0, None on the other ranks."""
    part = score_share(loaded, dm, key, "train", True, device)
    return reduced_scatters(part, 1 if loaded.multilabel else len(loaded.labels), device)


def reduced_scatters(part: Outputs, n_classes: int, device) -> GateScatters | None:
    """The OOD gate's statistics of every rank's ``part``, summed on rank 0 (None on the other ranks).

    Two sums per gate part (`lungnet.scoring.scatter`): the class counts and row sums, all-reduced (every rank then
    knows the class means), and the squares about those means, reduced to rank 0 (on a CUDA device computed and
    summed there in float64, `squares_on`; gloo sums host float32). The sample's features never leave
    their rank (20k images of 2048 features would be 180 MB to gather), rank 0 receives one D x D array whatever the
    number of ranks, and each rank computes the squares of its own rows.

    Args:
        part: this rank's scored share (gate inputs as features; no rows on a rank with no share).
        n_classes: the class indices (the labels for a single-label model; 1 for multi-label: one mean).
        device: this rank's device (NCCL sums CUDA tensors, gloo CPU ones).
    """
    has_rows = len(part.paths) > 0
    width = torch.tensor([part.features.shape[1] if has_rows else 0], device=device)
    dist.all_reduce(width, op=dist.ReduceOp.MAX)  # a rank with no rows has no features to tell it the width
    inputs = part.features if has_rows else np.zeros((0, int(width.item())), np.float32)
    classes = None if n_classes == 1 else np.asarray(part.targets, dtype=np.int64)
    on_device = accelerator(device)
    out = []
    for x in split_inputs(inputs):
        sums = torch.from_numpy(class_sums(x, classes, n_classes)).to(device)
        dist.all_reduce(sums)
        totals = sums.cpu().numpy()
        if on_device is not None:  # float64 where computed, summed there: no host round trip
            squares = squares_on(x, classes, totals, on_device)
        else:
            squares = torch.from_numpy(squares_about(x, classes, totals)).to(device)
        dist.reduce(squares, dst=0)  # the sum is on rank 0 alone: the others hold only their own share
        out.append(Scatter.from_sums(totals, squares.float().cpu().numpy()) if dist.get_rank() == 0 else None)
    return (out[0], out[1]) if dist.get_rank() == 0 else None


def score_shards(
    cfg, loaded: LoadedModel, dm: LungDataModule, device: str | torch.device, skip: set[str]
) -> dict[str, Outputs | GateScatters]:
    """Every rank: scores its shards of what the finish scores (`finish_requests`) with the selected checkpoint.

    Args:
        cfg: the train config (``ood.fit_max``, ``test``).
        loaded: the selected checkpoint, loaded (the same path on every rank, `agreed_path`).
        dm: training's data module.
        device: this rank's device.
        skip: split names not to score (``val``: rank 0 reuses the last validation pass's outputs).

    Returns:
        On rank 0, ``{split name: outputs}`` of whole splits, and as ``train`` the OOD gate's statistics of its
        training sample; elsewhere {}.
    """
    scored: dict[str, Outputs | GateScatters] = {}
    start = time.perf_counter()
    requests = finish_requests(cfg, dm, loaded.seed, skip)
    for key, name, features in requests:
        if name == "train":
            out = shard_scatters(loaded, dm, key, device)
        else:
            out = shard_outputs(loaded, dm, key, name, features, device)
        if out is not None:
            scored[name] = out
    names = ", ".join("the OOD sample" if name == "train" else name for _, name, _ in requests) or "nothing"
    log.info("After training: %d ranks scored %s in %.1f s", world_size(), names, time.perf_counter() - start)
    return scored
