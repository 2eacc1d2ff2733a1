"""Image preprocessing: resize, albumentations augmentation, channel layout and normalisation.

Augmentation pipelines come from the ``augment`` config group as lists of albumentations
transforms (Hydra ``_target_`` dicts). Normalisation uses the model's own mean/std (`ModelSpec`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import albumentations as A
import numpy as np
import torch
from hydra.utils import instantiate

log = logging.getLogger(__name__)


def build_transform(image_size: int, steps: Sequence | None = None, resize: str = "squash") -> A.Compose:
    """Resize to ``image_size`` then apply the configured augmentation steps.

    Args:
        image_size: output side in pixels.
        steps: albumentations transforms, or Hydra dicts with ``_target_`` (None: no augmentation).
        resize: ``squash`` (plain resize) or ``pad`` (keep aspect ratio, pad with black).

    Returns:
        An albumentations pipeline taking ``image=`` a float32 (H, W, 1) array in [0, 1].
    """
    if resize == "pad":
        ops = [A.LongestMaxSize(max_size=image_size), A.PadIfNeeded(image_size, image_size, border_mode=0, fill=0)]
    elif resize == "squash":
        ops = [A.Resize(image_size, image_size)]
    else:
        raise ValueError(f"data.resize must be 'squash' or 'pad', got {resize!r}")
    for step in steps or []:
        ops.append(instantiate(step) if isinstance(step, dict) or hasattr(step, "keys") else step)
    return A.Compose(ops)


class Normalize:
    """float (H, W) in [0, 1] -> tensor (C, H, W) standardised with the model's mean/std.

    Args:
        mean: per-channel means of the model's pretraining (length 3 or 1).
        std: per-channel stds.
        in_chans: channels the model takes; a 1-channel model uses the mean of the means.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], in_chans: int) -> None:
        mean, std = list(mean), list(std)
        if in_chans != len(mean):
            mean, std = [float(np.mean(mean))] * in_chans, [float(np.mean(std))] * in_chans
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.in_chans = in_chans

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        x = x.unsqueeze(0).expand(self.in_chans, -1, -1)
        return (x - self.mean) / self.std


def make_pipeline(transform: A.Compose, normalize: Normalize) -> Callable[[np.ndarray], torch.Tensor]:
    """Chains an albumentations pipeline and `Normalize` into image (H, W) -> tensor (C, H, W)."""

    def run(image: np.ndarray) -> torch.Tensor:
        out = transform(image=image[..., None])["image"]
        return normalize(np.clip(out[..., 0] if out.ndim == 3 else out, 0.0, 1.0))

    return run
