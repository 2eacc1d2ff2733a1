"""Near duplicates: the multi-index search equals comparing every pair, and data.near_duplicates=group keeps near
copies in one split."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lungnet.config_checks import check_stored
from lungnet.data.datamodule import LungDataModule
from lungnet.data.near_duplicates import brute_force_pairs, near_groups, near_pairs, near_pairs_within
from lungnet.data.splits import _merge_near_copies
from lungnet.errors import ConfigError, DataError
from lungnet.models.specs import ModelSpec
from lungnet.schema import DataConfig

SPEC = ModelSpec(name="t", arch="t", input_size=32, in_chans=1, mean=(0.5,), std=(0.25,))


def _flip(hashes: np.ndarray, rng: np.random.Generator, most: int) -> np.ndarray:
    """Copies of ``hashes`` with 0..most random bits flipped each."""
    bits = np.unpackbits(hashes.view(np.uint8), axis=1)
    for row in bits:
        row[rng.choice(256, rng.integers(0, most + 1), replace=False)] ^= 1
    return np.packbits(bits, axis=1).view(np.uint64)


def _hashes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Correlated, biased bits like a dHash's (crowded buckets), plus planted near and exact copies."""
    bias = rng.uniform(0.05, 0.95, 256)
    bits = (rng.random((n, 256)) < bias).astype(np.uint8)
    bits[:, 1::2] = bits[:, ::2] ^ (rng.random((n, 128)) < 0.1)  # neighbouring bits agree mostly
    hashes = np.packbits(bits, axis=1).view(np.uint64)
    planted = rng.integers(0, n, n // 3)
    hashes[rng.integers(0, n, n // 3)] = _flip(hashes[planted], rng, 24)
    return hashes


@pytest.mark.parametrize("threshold", [0, 2, 5, 12, 20, 70])
def test_multi_index_search_equals_comparing_every_pair(threshold):
    rng = np.random.default_rng(threshold)
    a, b = _hashes(rng, 240), _hashes(rng, 170)
    b[:40] = _flip(a[:40], rng, threshold + 2)  # copies across the two sets, some just past the threshold
    want = brute_force_pairs(a, b, threshold)
    assert len(want) >= 10  # the planted copies are there to be found
    assert np.array_equal(near_pairs(a, b, threshold), want)
    assert np.array_equal(near_pairs(a, b, threshold, budget=7), want)  # many small chunks
    both = np.concatenate([a, b])
    every = brute_force_pairs(both, both, threshold)
    assert np.array_equal(near_pairs_within(both, threshold, budget=5), every[every[:, 0] < every[:, 1]])


def test_empty_sides_find_nothing():
    some = _hashes(np.random.default_rng(0), 5)
    assert near_pairs(some[:0], some, 12).shape == (0, 3) and near_pairs_within(some[:1], 12).shape == (0, 3)


def test_near_groups_follow_chains_of_near_copies():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 2**63, (4, 4), dtype=np.uint64)
    bits = np.unpackbits(base[:1].view(np.uint8), axis=1).repeat(3, axis=0)
    bits[1, :8] ^= 1  # 8 bits from the first
    bits[2, :16] ^= 1  # 8 from the second, 16 from the first: joined through the second
    chain = np.packbits(bits, axis=1).view(np.uint64)
    hashes = np.concatenate([chain, base[1:]])
    table = pd.DataFrame({"dhash": [h.tobytes().hex() for h in hashes] + [""]})
    group, pairs = near_groups(table, 10)
    assert group.tolist() == [0, 0, 0, 1, 2, 3, 4]
    assert pairs[:, :2].tolist() == [[0, 1], [1, 2]]


def test_merging_near_groups_keeps_every_other_group_name():
    groups = np.array(["pat:a", "pat:a", "img:2", "img:3", "pat:b"])
    assert _merge_near_copies(groups, np.arange(5)).tolist() == groups.tolist()
    merged = _merge_near_copies(groups, np.array([0, 1, 2, 0, 1]))  # img:3 near pat:a, pat:b near pat:a (row 1)
    assert merged.tolist() == ["pat:a", "pat:a", "img:2", "pat:a", "pat:a"]


def test_near_duplicates_accepts_group_and_refuses_other_words():
    assert check_stored({"near_duplicates": "group"}, DataConfig, "a.ckpt", "data.")["near_duplicates"] == "group"
    assert check_stored({"near_duplicates": True}, DataConfig, "a.ckpt", "data.")["near_duplicates"] is True
    with pytest.raises(ConfigError, match="near_duplicates='grouped' must be one of: false, true, group"):
        check_stored({"near_duplicates": "grouped"}, DataConfig, "a.ckpt", "data.")


def _smooth(seed: int, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = sum(np.sin(2 * np.pi * (rng.random() * 3 * x + rng.random() * 3 * y + rng.random())) for _ in range(4))
    return ((img - img.min()) / np.ptp(img) * 255).astype(np.uint8)


@pytest.fixture
def near_copies(tmp_path):
    """Class folders without split folders: 10 smooth images a class, 4 of each resized and recompressed beside."""
    root = tmp_path / "flat"
    for c, cls in enumerate(["NORMAL", "PNEUMONIA"]):
        (root / cls).mkdir(parents=True)
        for i in range(10):
            image = Image.fromarray(_smooth(100 * c + i))
            image.save(root / cls / f"img_{i}.png")
            if i < 4:
                image.resize((96, 96), Image.Resampling.BILINEAR).save(root / cls / f"img_{i}_copy.jpg", quality=80)
    return root


def _cfg(root, **kw):
    return {
        "source": "pneumonia",
        "root": str(root),
        "batch_size": 4,
        "val_fraction": 0.25,
        "test_fraction": 0.25,
        **kw,
    }


def _crossing(table: pd.DataFrame) -> int:
    """Near-copy pairs (img_i, img_i_copy) whose two images are in different splits."""
    names = table["path"].map(lambda p: "/".join(p.rsplit("/", 2)[-2:]))
    split = dict(zip(names, table["split"], strict=True))
    return sum(split[k] != split[k.replace("_copy.jpg", ".png")] for k in split if k.endswith("_copy.jpg"))


def test_group_keeps_near_copies_in_one_split_and_counts_them(near_copies, tmp_path):
    grouped = LungDataModule(_cfg(near_copies, near_duplicates="group"), SPEC, seed=0, run_dir=tmp_path / "g")
    grouped.setup()
    assert _crossing(grouped.table) == 0
    report = json.loads((tmp_path / "g" / "data_report.json").read_text())
    assert report["near_duplicate_groups"] == {"threshold": 12, "groups": 8, "images": 16, "largest": 2, "pairs": 8}
    assert report["near_duplicate_images"] == {"train/val": 0, "train/test": 0, "val/test": 0}
    with pytest.raises(DataError, match="or data.near_duplicates=group to keep near copies in one split"):
        LungDataModule(_cfg(near_copies, near_duplicates=True), SPEC, seed=0).setup()
    reported = LungDataModule(_cfg(near_copies, near_duplicates=True, allow_leakage=True), SPEC, seed=0)
    reported.setup()  # the same seed without grouping: near copies cross, and are counted
    assert _crossing(reported.table) > 0
    assert sum(reported.report["near_duplicate_images"].values()) == _crossing(reported.table)
    assert "near_duplicate_groups" not in reported.report
