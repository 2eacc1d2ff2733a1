import numpy as np

from lungnet.data.cache import build_cache
from lungnet.data.images import read_image
from lungnet.data.transforms import build_transform
from tests.conftest import write_png


def test_cache_matches_direct_decoding_and_is_reused(tmp_path):
    paths = [str(write_png(tmp_path / "img" / f"{i}.png", i, size=48)) for i in range(5)]
    hashes = [f"h{i}" for i in range(5)]
    reader = build_cache(paths, hashes, 32, "squash", tmp_path / "cache")
    direct = build_transform(32, None, "squash")(image=read_image(paths[2])[..., None])["image"][..., 0]
    cached = reader(paths[2])
    assert cached.shape == (32, 32) and cached.dtype == np.float32
    assert np.abs(cached - direct).max() <= 0.5 / 255 + 1e-6  # only uint8 rounding differs
    files = sorted((tmp_path / "cache").glob("*.npy"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    build_cache(paths, hashes, 32, "squash", tmp_path / "cache")
    assert files[0].stat().st_mtime_ns == mtime  # reused, not rebuilt


def test_cache_invalidated_by_content_or_preprocessing(tmp_path):
    paths = [str(write_png(tmp_path / f"{i}.png", i)) for i in range(3)]
    build_cache(paths, ["a", "b", "c"], 32, "squash", tmp_path / "c")
    build_cache(paths, ["a", "b", "CHANGED"], 32, "squash", tmp_path / "c")
    build_cache(paths, ["a", "b", "c"], 24, "squash", tmp_path / "c")
    build_cache(paths, ["a", "b", "c"], 32, "pad", tmp_path / "c")
    assert len(list((tmp_path / "c").glob("*.npy"))) == 4
    assert not list((tmp_path / "c").glob("*.tmp"))


def test_reader_survives_pickling_for_workers(tmp_path):
    import pickle

    paths = [str(write_png(tmp_path / f"{i}.png", i)) for i in range(2)]
    reader = build_cache(paths, ["a", "b"], 16, "squash", tmp_path / "c")
    reader(paths[0])
    clone = pickle.loads(pickle.dumps(reader))
    assert np.array_equal(clone(paths[1]), reader(paths[1]))


def test_downsampled_cache_matches_direct_and_has_its_own_key(tmp_path):
    paths = [str(write_png(tmp_path / "img" / f"{i}.png", i, size=64)) for i in range(3)]
    plain = build_cache(paths, ["a", "b", "c"], 32, "squash", tmp_path / "c")
    down = build_cache(paths, ["a", "b", "c"], 32, "squash", tmp_path / "c", downsample_to=16)
    assert len(list((tmp_path / "c").glob("*.npy"))) == 2
    direct = build_transform(32, None, "squash", 16)(image=read_image(paths[1])[..., None])["image"][..., 0]
    assert np.abs(down(paths[1]) - direct).max() <= 0.5 / 255 + 1e-6
    assert np.abs(plain(paths[1]) - direct).max() > 0.05  # the plain cache kept the detail
