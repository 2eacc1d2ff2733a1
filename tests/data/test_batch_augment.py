import pytest
import torch

from lungnet.data.batch_augment import BatchAugment
from lungnet.errors import ConfigError
from tests.data.test_datamodule import XRAY


def test_batch_augment_draws_per_image_and_per_step_reproducibly():
    images = torch.full((6, 1, 24, 24), 128, dtype=torch.uint8)
    steps = [{**step, "p": 1.0} for step in XRAY]
    augment = BatchAugment.from_steps(steps, seed=3)
    out = augment(images, step=7)
    assert out.dtype == torch.float32 and out.shape == images.shape and 0 <= out.min() and out.max() <= 1
    assert not torch.allclose(out[0], out[1])  # each image its own draw, not one per batch
    assert torch.equal(out, augment(images, step=7)) and not torch.equal(out, augment(images, step=8))


def test_batch_augment_refuses_steps_it_has_no_batch_version_of():
    with pytest.raises(ConfigError, match="HorizontalFlip has no batch version for data.gpu_augment=true"):
        BatchAugment.from_steps([{"_target_": "albumentations.HorizontalFlip"}], seed=0)
