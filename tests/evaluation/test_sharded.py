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
