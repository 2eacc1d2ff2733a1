import json
import os
import pickle

import numpy as np
from PIL import Image

from lungnet.data.cache import build_store, larger_than
from lungnet.data.images import read_image
from lungnet.data.transforms import build_transform
from tests.conftest import write_png


def _wide_png(path, width=60, height=30, seed=0):
    rng = np.random.default_rng(seed)
    arr = (rng.random((height, width)) * 200 + 40).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return str(path)


def _npy(folder):
    return sorted(folder.glob("*.npy"))


def test_store_round_trip_keeps_uint8_values_shape_and_aspect(tmp_path):
    """A prepared image is the pipeline's own resize of the file, in uint8: letterboxed (aspect kept) for pad."""
    paths = [_wide_png(tmp_path / "img" / f"{i}.png", seed=i) for i in range(3)]
    reader = build_store(paths, 32, "pad", tmp_path / "store", workers=2)
    stored = reader(paths[1])
    assert stored.dtype == np.uint8 and stored.shape == (32, 32)
    direct = build_transform(32, None, "pad")(image=read_image(paths[1], keep_uint8=True)[..., None])["image"][..., 0]
    assert np.array_equal(stored, direct)
    rows = np.nonzero(stored.max(axis=1))[0]  # 60x30 -> 32x16 content, 8 black rows above and below
    assert (rows.min(), rows.max()) == (8, 23) and stored[:, 0].any() and stored.min() == 0
    assert np.array_equal(pickle.loads(pickle.dumps(reader))(paths[2]), reader(paths[2]))  # for loader workers
    squash = build_store(paths, 24, "squash", tmp_path / "store", workers=1)
    assert squash(paths[0]).shape == (24, 24) and squash(paths[0]).min() > 0  # stretched, no border
    assert len(_npy(tmp_path / "store")) == 2 and not list((tmp_path / "store").glob(".*tmp"))


def test_store_is_reused_and_rebuilt_when_an_image_or_the_size_changes(tmp_path):
    paths = [str(write_png(tmp_path / "img" / f"{i}.png", i, size=48)) for i in range(3)]
    store = tmp_path / "store"
    build_store(paths, 32, "squash", store, workers=1)
    (array,) = _npy(store)
    built = array.stat().st_mtime_ns
    build_store(paths, 32, "squash", store, workers=1)
    assert array.stat().st_mtime_ns == built  # unchanged files: reused
    write_png(tmp_path / "img" / "1.png", 99, size=48)  # same size, new content and mtime
    os.utime(paths[1], ns=(built + 10**9, built + 10**9))
    reader = build_store(paths, 32, "squash", store, workers=1)
    assert array.stat().st_mtime_ns != built
    fresh = build_transform(32, None, "squash")(image=read_image(paths[1], keep_uint8=True)[..., None])["image"]
    assert np.array_equal(reader(paths[1]), fresh[..., 0])
    build_store(paths, 24, "squash", store, workers=1)  # another prepared_size: its own store
    build_store(paths, 32, "squash", store, workers=1, downsample_to=16)
    assert len(_npy(store)) == 3


def test_a_store_whose_index_does_not_fit_is_rebuilt(tmp_path):
    """The index is a file from an earlier run: one that lists other rows is not trusted."""
    paths = [str(write_png(tmp_path / f"{i}.png", i)) for i in range(2)]
    build_store(paths, 16, "squash", tmp_path / "s", workers=1)
    (index,) = (tmp_path / "s").glob("*.json")
    index.write_text(json.dumps({"files": [["x", 1, 2]]}))
    reader = build_store(paths, 16, "squash", tmp_path / "s", workers=1)
    assert json.loads(index.read_text())["files"][0][0] == paths[0]
    assert reader(paths[0]).shape == (16, 16)


def test_larger_than_reads_headers(tmp_path):
    paths = [str(write_png(tmp_path / f"{i}.png", i, size=40)) for i in range(3)]
    assert larger_than(paths, 32) and not larger_than(paths, 40) and not larger_than([], 8)
