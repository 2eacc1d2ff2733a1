"""Hand-built models with known explanations, and a tiny self-describing checkpoint (no training)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from lungnet.data.labels import SYNTHETIC
from lungnet.data.synthetic import generate
from lungnet.models.registry import create_model


class HalfSplit(nn.Module):
    """(N, 1, H, W) -> (N, 2, H, W): channel 0 is the left half of the image, channel 1 the right half."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1, bias=False)
        nn.init.ones_(self.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        left = torch.zeros_like(y)
        left[..., : y.shape[-1] // 2] = 1
        return torch.cat([y * left, y * (1 - left)], dim=1)


class Halves(nn.Module):
    """Logits from the two image halves, so every class's evidence lies in a known half.

    ``outputs=2``: logit 0 = left mass, logit 1 = right mass. ``outputs=1``: a single logit
    z = left - right (positive = left, negative = right).
    """

    def __init__(self, outputs: int = 2) -> None:
        super().__init__()
        self.features = HalfSplit()
        self.outputs = outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mass = self.features(x).mean(dim=(2, 3))
        return mass if self.outputs == 2 else (mass[:, 0] - mass[:, 1])[:, None]


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a shared, busy CPU several threads per process slow these tests 10-50x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def halves():
    """Factory for `Halves` models."""
    return Halves


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A tiny synthetic set: 3 phantoms per class at 48 px, with lesion masks."""
    return generate(tmp_path_factory.mktemp("syn"), n_per_class=3, size=48, seed=1)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A lungnet checkpoint file of an untrained 1-channel simple_cnn at 32 px (4 synthetic classes)."""
    torch.manual_seed(0)
    model = create_model("simple_cnn", len(SYNTHETIC), in_chans=1, image_size=32)
    opts = {"name": "simple_cnn", "in_chans": 1, "image_size": 32, "pretrained": False, "weights": None}
    ckpt = {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": {
            "spec": model.spec.to_dict(),
            "model": opts,
            "labels": list(SYNTHETIC),
            "multilabel": False,
            "data": {"name": "synthetic", "image_size": 32, "resize": "squash"},
        },
    }
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    torch.save(ckpt, path)
    return path
