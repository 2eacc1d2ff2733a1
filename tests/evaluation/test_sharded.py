"""The shards of a split after a multi-process training (issue #27 §3): every image once, in the split's order."""

import numpy as np

from lungnet.evaluation.sharded import joined, shard
from lungnet.scoring.outputs import Outputs


def test_the_shards_partition_a_split_in_order():
    for n in range(12):
        for world in (1, 2, 3, 5):
            parts = [shard(n, rank, world) for rank in range(world)]
            assert [i for part in parts for i in part] == list(range(n)), (n, world)
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_joined_shards_are_the_split_and_an_empty_shard_adds_nothing():
    probs = np.arange(10, dtype=np.float32).reshape(5, 2) / 10
    feats = np.arange(15, dtype=np.float32).reshape(5, 3)
    whole = Outputs("val", probs, np.arange(5), list("abcde"), probs * 2, feats)
    empty = np.zeros((0, 2), np.float32)
    parts = [
        Outputs("val", probs[:2], np.arange(2), list("ab"), probs[:2] * 2, feats[:2]),
        Outputs("val", empty, np.zeros(0, np.int64), [], empty),
        Outputs("val", probs[2:], np.arange(2, 5), list("cde"), probs[2:] * 2, feats[2:]),
    ]
    got = joined(parts, "val")
    assert got.paths == whole.paths and got.probs.dtype == np.float32
    for field in ("probs", "targets", "logits", "features"):
        np.testing.assert_array_equal(getattr(got, field), getattr(whole, field))


def _reduce_on_rank(rank: int, world: int, port: int, out: str) -> None:
    """One gloo rank: its share of a fixed sample (rank 1's is empty), summed by `reduced_scatters` on the host's
    path, then on a CUDA device's (squares computed and summed as float64 tensors), taken on the CPU's torch."""
    import os
    import pickle

    import torch
    import torch.distributed as dist

    from lungnet.evaluation import sharded
    from lungnet.evaluation.sharded import reduced_scatters

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    inputs, classes = _sample()
    rows = {0: slice(0, 30), 1: slice(30, 30), 2: slice(30, 80)}[rank]
    part = Outputs(
        "train",
        np.zeros((0, 3), np.float32),
        classes[rows],
        [f"{i}" for i in range(rows.start, rows.stop)],
        np.zeros((0, 3), np.float32),
        inputs[rows] if rows.stop > rows.start else None,
    )
    got = [reduced_scatters(part, 3, "cpu")]
    sharded.accelerator = lambda device: torch.device("cpu")
    got.append(reduced_scatters(part, 3, "cpu"))
    if rank == 0:
        with open(out, "wb") as fh:
            pickle.dump(got, fh)
    dist.destroy_process_group()


def _sample() -> tuple[np.ndarray, np.ndarray]:
    from lungnet.scoring.gate_inputs import THUMB

    rng = np.random.default_rng(5)
    return rng.normal(size=(80, 6 + THUMB * THUMB)).astype(np.float32), np.where(np.arange(80) < 30, 0, 2)


def test_reduced_gate_statistics_over_three_gloo_ranks_one_empty_equal_one_process(tmp_path):
    import pickle
    import socket

    import torch.multiprocessing as mp

    from lungnet.scoring.gate_inputs import gate_scatters

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_reduce_on_rank, args=(3, port, str(tmp_path / "got.pkl")), nprocs=3)
    host, device = pickle.loads((tmp_path / "got.pkl").read_bytes())
    for ranks, one in [*zip(host, gate_scatters(*_sample()), strict=True), *zip(device, host, strict=True)]:
        np.testing.assert_array_equal(ranks.classes, [0, 2])  # class 0 on rank 0 only, class 1 nowhere
        np.testing.assert_array_equal(ranks.counts, one.counts)
        np.testing.assert_allclose(ranks.means, one.means, rtol=1e-12)
        np.testing.assert_allclose(ranks.scatter, one.scatter, rtol=1e-5, atol=1e-5 * np.abs(one.scatter).max())
