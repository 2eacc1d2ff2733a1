"""Image hashes kept in checkpoints and the check that evaluated images are not among them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lungnet.data.checks import scan_files
from lungnet.data.overlap import enforce, exact64, find_overlap, image_hashes, overlap_markdown, training_copies
from lungnet.data.sources import DataError
from tests.conftest import write_png


def scanned(paths, split: str) -> pd.DataFrame:
    return scan_files(pd.DataFrame({"path": [str(p) for p in paths], "split": split}))


@pytest.fixture
def recorded(tmp_path):
    """Hashes of 6 training and 2 validation images (smooth gradients, so resized copies keep their dHash)."""
    files = []
    for i in range(8):
        arr = np.add.outer(np.linspace(0, 200, 64), np.linspace(0, 50 * (i + 1) % 255, 64)) % 255
        arr = np.roll(arr, 7 * i, axis=1).astype(np.uint8)
        files.append(tmp_path / "train" / f"{i}.png")
        files[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(arr).save(files[-1])
    table = pd.concat([scanned(files[:6], "train"), scanned(files[6:], "val")], ignore_index=True)
    return files, image_hashes(table)


def test_hashes_are_compact_and_exact64_keeps_the_digest_prefix(recorded):
    _, hashes = recorded
    assert hashes["train"]["exact"].dtype.is_floating_point is False and hashes["train"]["exact"].shape == (6,)
    assert hashes["train"]["dhash"].shape == (6, 32) and hashes["val"]["exact"].shape == (2,)
    assert exact64(pd.Series(["ff" * 20]))[0] == -1 and exact64(pd.Series(["00" * 7 + "01" + "ab" * 12]))[0] == 1


def test_exact_and_near_copies_are_found_and_named(recorded, tmp_path):
    files, hashes = recorded
    new = [write_png(tmp_path / "new" / f"n{i}.png", 100 + i, size=64) for i in range(3)]
    small = tmp_path / "new" / "resized.png"
    Image.open(files[7]).resize((48, 48)).save(small)
    table = scanned([files[0], files[1], small, *new], "all")
    exact_only = find_overlap(table, hashes, None)
    assert exact_only.n_seen == 2 and exact_only.exact == {"train": 2, "val": 0} and exact_only.near == {}
    near = find_overlap(table, hashes, 12)
    assert near.n_seen == 3 and near.near["val"] == 1 and near.seen.tolist() == [True, True, True, False, False, False]
    assert {e["kind"] for e in near.examples} == {"exact copy", "near copy"}
    with pytest.raises(DataError, match=r"3 of 6 evaluated images are copies .*train: 2 exact"):
        enforce(near, allow=False, checkpoint="m.ckpt")
    allowed = enforce(find_overlap(table, hashes, 12), allow=True, checkpoint="m.ckpt")
    assert allowed.allowed and "data.allow_leakage=true" in overlap_markdown(allowed.summary())
    assert find_overlap(table, hashes, 12, against=("train",)).n_seen == 2


def test_no_hashes_means_not_checked(recorded):
    files, _ = recorded
    result = enforce(find_overlap(scanned(files, "all"), None, 12), allow=False, checkpoint="old.ckpt")
    assert not result.recorded and result.n_seen == 0
    assert "keeps no image hashes" in overlap_markdown(result.summary())


def test_training_copies_for_predict(recorded, tmp_path):
    files, hashes = recorded
    other = write_png(tmp_path / "other.png", 999, size=64)
    assert training_copies([str(files[2]), str(files[6]), str(other), str(tmp_path / "gone.png")], hashes) == {
        str(files[2]): "train",
        str(files[6]): "val",
    }
