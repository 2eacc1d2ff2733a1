"""Image preprocessing: resize, albumentations augmentation, channel layout and normalisation.

Augmentation pipelines come from the ``augment`` config group as lists of albumentations
transforms (Hydra ``_target_`` dicts). Normalisation uses the model's own mean/std (`ModelSpec`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from hydra.utils import instantiate

log = logging.getLogger(__name__)


def _resize_ops(size: int, resize: str, area: bool = False) -> list:
    # area=True: area interpolation when shrinking (as image libraries downsample), bilinear when enlarging
    kw = {"interpolation": cv2.INTER_LINEAR, **({"area_for_downscale": "image"} if area else {})}
    if resize == "pad":
        return [A.LongestMaxSize(max_size=size, **kw), A.PadIfNeeded(size, size, border_mode=0, fill=0)]
    if resize == "squash":
        return [A.Resize(size, size, **kw)]
    raise ValueError(f"data.resize must be 'squash' or 'pad', got {resize!r}")


def build_transform(
    image_size: int, steps: Sequence | None = None, resize: str = "squash", downsample_to: int | None = None
) -> A.Compose:
    """Resize to ``image_size`` then apply the configured augmentation steps.

    Args:
        image_size: output side in pixels.
        steps: albumentations transforms, or Hydra dicts with ``_target_`` (None: no augmentation).
        resize: ``squash`` (plain resize) or ``pad`` (keep aspect ratio, pad with black).
        downsample_to: first resize every image to this side, then to ``image_size``, so a set that mixes
            native resolutions (the NIH sample: 64 and 256 px) carries the same detail in every image and
            a model cannot tell the sources apart by sharpness (area interpolation when shrinking, as image
            libraries downsample, bilinear when enlarging a smaller image; a 256 px NIH image reduced so
            differs from the 64 px release by ~0.1 % of the range on average). None: off.

    Returns:
        An albumentations pipeline taking ``image=`` a float32 (H, W, 1) array in [0, 1].
    """
    ops = _resize_ops(int(downsample_to), resize, area=True) if downsample_to else []
    ops += _resize_ops(image_size, resize)
    for step in steps or []:
        ops.append(instantiate(step) if isinstance(step, dict) or hasattr(step, "keys") else step)
    return A.Compose(ops)


def fit_within(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """``image`` reduced (area interpolation) so that its long side is at most ``max_side``; None: unchanged.

    An overlay needs no more pixels than it is shown with: at 8000 x 8000 px the colour-mapped overlay
    alone took gigabytes (float64 RGBA), at 1024 px a few MB.
    """
    height, width = image.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return image
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


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
