"""Preprocessing transforms: ``downsample_to`` makes images of different native resolutions alike."""

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lungnet.data.images import read_image
from lungnet.data.transforms import CPU_CHUNK_BYTES, Normalize, build_transform
from tests.conftest import CONF, shared


def _nih_256(n: int = 3) -> list:
    paths = sorted((shared("nih") / "images").glob("*.png"))
    return [p for p in paths[:200] if Image.open(p).size == (256, 256)][:n]


@pytest.mark.parametrize("resize", ["squash", "pad"])
def test_downsample_to_erases_the_native_resolution(resize):
    """A 256 px NIH X-ray and its 64 px copy look alike after ``downsample_to=64``, not without it."""
    for path in _nih_256():
        full = read_image(path)
        small = np.asarray(Image.fromarray(np.uint8(full * 255)).resize((64, 64), Image.BOX), np.float32) / 255
        gaps = {}
        for down in (None, 64):
            transform = build_transform(128, None, resize, down)
            a, b = (transform(image=img[..., None])["image"][..., 0] for img in (full, small))
            assert a.shape == b.shape == (128, 128)
            gaps[down] = float(np.abs(a - b).mean())
        assert gaps[64] < gaps[None] / 4, gaps  # measured: ~0.001 against ~0.012-0.018
        assert gaps[64] < 0.005, gaps


def test_downsample_to_removes_detail_finer_than_its_side():
    rng = np.random.default_rng(0)
    noise = rng.random((256, 256), dtype=np.float32)  # detail at the pixel scale only
    sharp = build_transform(128, None, "squash")(image=noise[..., None])["image"]
    soft = build_transform(128, None, "squash", 32)(image=noise[..., None])["image"]
    assert soft.std() < sharp.std() / 2


def test_downsample_to_enlarges_a_smaller_image_smoothly():
    """An image below ``downsample_to`` is enlarged bilinearly, not in blocks (no sharpness cue either way)."""
    rng = np.random.default_rng(1)
    small = rng.random((32, 32), dtype=np.float32)
    plain = build_transform(128, None, "squash")(image=small[..., None])["image"][..., 0]
    down = build_transform(128, None, "squash", 64)(image=small[..., None])["image"][..., 0]
    assert np.abs(plain - down).mean() < 0.035  # measured 0.026; block enlargement (cv2 area) gives 0.056
    steps = np.abs(np.diff(down, axis=1))
    assert (steps < 1e-6).mean() < 0.05  # measured 0; block enlargement repeats ~27 % of the columns


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "augment").glob("*.yaml")))
def test_every_augment_group_builds_and_keeps_the_image_contract(name):
    """Each conf/augment/*.yaml instantiates and maps a float [0, 1] image to the same size, not constant."""
    steps = yaml.safe_load((CONF / "augment" / f"{name}.yaml").read_text())["train"]
    transform = build_transform(32, steps)
    image = np.random.default_rng(0).random((20, 24, 1), dtype=np.float32)
    outs = [transform(image=image)["image"] for _ in range(8)]
    assert all(o.shape[:2] == (32, 32) and o.dtype == np.float32 for o in outs)
    assert all(o.std() > 0.01 for o in outs)
    if steps:
        assert max(float(np.abs(o - outs[0]).max()) for o in outs[1:]) > 0  # random: not every draw the same


# full-resolution Kermany validation images and their copies in PneumoniaMNIST (bench.studies.kermany_in_pneumoniamnist)
KERMANY_IN_PNEUMONIAMNIST = {
    "NORMAL/NORMAL2-IM-1427-0001.jpeg": "train/NORMAL/train_00599.png",
    "NORMAL/NORMAL2-IM-1436-0001.jpeg": "val/NORMAL/val_00210.png",
    "PNEUMONIA/person1946_bacteria_4874.jpeg": "train/PNEUMONIA/train_02155.png",
    "PNEUMONIA/person1951_bacteria_4882.jpeg": "train/PNEUMONIA/train_01738.png",
}


def test_pneumoniamnist_config_prepares_a_full_resolution_film_as_medmnist_did():
    """The pneumoniamnist data config turns a full-resolution Kermany film into (nearly) its PneumoniaMNIST copy:
    centre crop and 28 px, then the training input size. Squashing the whole film instead, as before, leaves 32-37
    grey levels of 255 between them, more than between two different PneumoniaMNIST images (>= 10)."""
    from tests.conftest import compose_cfg

    data = compose_cfg("train", ["data=pneumoniamnist"]).data
    assert (data.resize, data.downsample_to) == ("crop", 28)
    kermany, mnist = shared("kermany_val16"), shared("pneumoniamnist")
    for film, copy in KERMANY_IN_PNEUMONIAMNIST.items():
        ref = np.asarray(Image.open(mnist / copy).convert("L"), np.float32)[..., None] / 255
        full = read_image(kermany / film)[..., None]
        transform = build_transform(data.image_size, None, data.resize, data.downsample_to)
        gap = float(np.abs(transform(image=full)["image"] - transform(image=ref)["image"]).mean()) * 255
        assert gap < 6, (film, gap)  # measured 1.9-3.0 at 64 px (2.8-5.0 at 28 px)
        squashed = build_transform(data.image_size, None, "squash", data.downsample_to)(image=full)["image"]
        assert float(np.abs(squashed - transform(image=ref)["image"]).mean()) * 255 > 10


def test_training_images_pass_crop_and_downsample_unchanged():
    """A square 28 px image (PneumoniaMNIST's own) is the same after ``crop`` + ``downsample_to=28`` as after the
    plain resize training used before: the config change does not change what a model trains on."""
    rng = np.random.default_rng(2)
    img = rng.random((28, 28, 1), dtype=np.float32)
    old = build_transform(64, None, "squash")(image=img)["image"]
    new = build_transform(64, None, "crop", 28)(image=img)["image"]
    assert np.abs(old - new).max() < 1e-6


def test_crop_keeps_the_centred_square():
    img = np.zeros((40, 100, 1), np.float32)
    img[:, 30:70] = 1.0  # the centred 40 x 40 square
    out = build_transform(20, None, "crop")(image=img)["image"]
    assert out.shape == (20, 20, 1)
    assert out.min() == 1.0


@pytest.mark.parametrize("side", [64, 600])  # the broadcast path and the channel-at-a-time path
def test_normalize_standardises_uint8_and_unit_float_images_alike(side):
    gray = np.random.default_rng(side).integers(0, 256, (side, side + 3), dtype=np.uint8)
    norm = Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 3)
    expected = (gray[None] / 255.0 - np.array([0.485, 0.456, 0.406])[:, None, None]) / np.array([0.229, 0.224, 0.225])[
        :, None, None
    ]
    for image in (gray, gray.astype(np.float32) / 255):
        out = norm(image)
        assert out.dtype == torch.float32 and out.shape == (3, side, side + 3)
        np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


def test_normalize_batch_writes_into_a_tensor_of_its_shape_and_only_such():
    norm = Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 3)
    raw = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 1, 8, 8), dtype=np.uint8))
    expected = norm.batch(raw)
    assert expected.shape == (4, 3, 8, 8) and torch.equal(expected[1], norm(raw[1, 0].numpy()))
    buffer = torch.full((4, 3, 8, 8), 7.0)
    assert norm.batch(raw, out=buffer) is buffer and torch.equal(buffer, expected)
    for other in (torch.zeros(2, 3, 8, 8), torch.zeros(4, 3, 8, 8, dtype=torch.float64)):
        kept = other.clone()
        got = norm.batch(raw, out=other)
        assert got is not other and torch.equal(got, expected) and torch.equal(other, kept)


def test_normalize_batch_on_a_cpu_steps_through_the_images_with_the_same_numbers():
    norm = Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 3)
    raw = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (5, 1, 240, 250), dtype=np.uint8))
    assert 4 * 3 * 240 * 250 > CPU_CHUNK_BYTES // 2  # at most one image per step: five steps
    gain, offset = norm._gain[255.0].view(1, -1, 1, 1), norm._offset.view(1, -1, 1, 1)
    whole = torch.mul(raw, gain).add_(offset)  # the whole batch in one go
    got = norm.batch(raw, out=torch.full((5, 3, 240, 250), float("nan")))
    assert torch.equal(got, whole)
    assert all(torch.equal(got[i], norm(raw[i, 0].numpy())) for i in range(5))
