import functools
import pickle
import random

import albumentations as A
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lungnet.data.cache import PreparedReader
from lungnet.data.datamodule import LungDataModule
from lungnet.data.dataset import derive_seed, pixel_reader, seed_transform
from lungnet.data.images import ImageReadError, read_image
from lungnet.data.transforms import build_transform
from lungnet.models.specs import ModelSpec
from tests.conftest import ROOT, make_class_folders


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 7])
def test_derive_seed_is_numpys_seed_sequence(n):
    rng = random.Random(n)
    for _ in range(200):
        keys = [rng.choice([0, 2**32 - 1, 2**32 + 5, rng.getrandbits(32), -rng.getrandbits(16)]) for _ in range(n)]
        expected = int(np.random.SeedSequence([k & 0xFFFFFFFF for k in keys]).generate_state(1)[0])
        assert derive_seed(*keys) == expected


def _seed_eagerly(transform, seed: int) -> None:
    """The former seeding: both generators of every step made at once, from the same derived seeds."""
    transform.seed = seed
    transform.random_generator, transform.py_random = np.random.default_rng(seed), random.Random(seed)
    for i, child in enumerate(getattr(transform, "transforms", None) or []):
        _seed_eagerly(child, derive_seed(seed, i + 1))


def test_lazy_seeding_draws_what_eager_seeding_drew_and_survives_pickling():
    steps = yaml.safe_load((ROOT / "conf" / "augment" / "xray.yaml").read_text())["train"]
    transform = build_transform(64, steps)
    image = np.random.default_rng(0).integers(0, 256, (96, 80, 1), dtype=np.uint8)
    outputs = []
    for seed in range(40):
        _seed_eagerly(transform, seed)
        eager = transform(image=image)["image"]
        seed_transform(transform, seed)
        np.testing.assert_array_equal(transform(image=image)["image"], eager)
        seed_transform(transform, seed)
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(transform))(image=image)["image"], eager)
        outputs.append(eager)
    assert sum(not np.array_equal(out, outputs[0]) for out in outputs) > 30  # the seed decides the draws


def test_pixel_reader_reads_the_file_once_as_read_image_does(tmp_path):
    gray = np.random.default_rng(1).integers(0, 256, (40, 30), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "a.png")
    Image.fromarray(gray.astype(np.uint16) * 16).save(tmp_path / "b.png")  # 12-bit values in 16 bits: float
    reader = pickle.loads(pickle.dumps(pixel_reader(verified=True)))
    for name in ("a.png", "b.png"):
        out, ref = reader(str(tmp_path / name)), read_image(tmp_path / name, keep_uint8=True)
        assert out.dtype == ref.dtype and out.shape == (40, 30)
        np.testing.assert_array_equal(out, ref)
    assert reader(str(tmp_path / "a.png")).dtype == np.uint8
    with pytest.raises(ImageReadError, match="cannot read file"):
        reader(str(tmp_path / "missing.png"))


def _spy(seen: list, image: np.ndarray, **_) -> np.ndarray:
    """An albumentations ``Lambda`` step that records the dtype and shape it is given and changes nothing."""
    seen.append((image.dtype, image.shape))
    return image


@pytest.mark.parametrize(("cache", "prepared_size"), [(False, None), (True, None), (True, 40)])
def test_augmentation_runs_on_uint8_at_the_working_resolution(tmp_path, cache, prepared_size):
    """Issue #27 §2: from the files (data.cache=false) and from the prepared store (at the input size, or larger and
    resized), every augmentation step of conf/augment/xray.yaml gets uint8 pixels already resized to the input size,
    and the one float conversion is `Normalize`'s, last."""
    root = make_class_folders(tmp_path / "chest_xray", ["NORMAL", "PNEUMONIA"], 2, ["train", "val", "test"], 48)
    first, last, normalised = [], [], []
    steps = yaml.safe_load((ROOT / "conf" / "augment" / "xray.yaml").read_text())["train"]
    augment = [A.Lambda(image=functools.partial(_spy, first)), *steps, A.Lambda(image=functools.partial(_spy, last))]
    spec = ModelSpec(name="t", arch="t", input_size=32, in_chans=1, mean=(0.5,), std=(0.25,))
    cfg = {"source": "pneumonia", "root": str(root), "cache": cache, "cache_dir": str(tmp_path / "store")}
    dm = LungDataModule({**cfg, "prepared_size": prepared_size}, spec, augment=augment, owns_data=True)
    table = dm.load_table()
    dataset = dm.make_dataset(table[table["split"] == "train"], train=True, split="train")
    assert isinstance(dataset.reader, PreparedReader) is cache
    read = dataset.reader(dataset.paths[0])
    assert read.dtype == np.uint8 and read.shape == ((prepared_size or 32,) * 2 if cache else (48, 48))
    normalize = dataset.pipeline.normalize
    dataset.pipeline.normalize = lambda image: (normalised.append((image.dtype, image.shape)), normalize(image))[1]
    items = [dataset[(0, i)]["image"] for i in range(len(dataset))]
    assert len(items) == 4 and all(x.dtype == torch.float32 and x.shape == (1, 32, 32) for x in items)
    assert first == last == [(np.uint8, (32, 32, 1))] * 4
    assert normalised == [(np.uint8, (32, 32))] * 4
