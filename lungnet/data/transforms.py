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


def center_square(image: np.ndarray, **_) -> np.ndarray:
    """The centred square of ``image`` whose side is the short side (how MedMNIST v2 cut its images)."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return image[top : top + side, left : left + side]


def _resize_ops(size: int, resize: str, area: bool = False) -> list:
    # area=True: area interpolation when shrinking (as image libraries downsample), bilinear when enlarging
    kw = {"interpolation": cv2.INTER_LINEAR, **({"area_for_downscale": "image"} if area else {})}
    if resize == "pad":
        return [A.LongestMaxSize(max_size=size, **kw), A.PadIfNeeded(size, size, border_mode=0, fill=0)]
    if resize == "squash":
        return [A.Resize(size, size, **kw)]
    if resize == "crop":  # crop first, then resize: within ~4 grey levels of MedMNIST's own 28 px images
        return [A.Lambda(image=center_square, name="center_square"), A.Resize(size, size, **kw)]
    raise ValueError(f"data.resize must be 'squash', 'pad' or 'crop', got {resize!r}")


def build_transform(
    image_size: int,
    steps: Sequence | None = None,
    resize: str = "squash",
    downsample_to: int | None = None,
    sized: bool = False,
) -> A.Compose:
    """Resize to ``image_size`` then apply the configured augmentation steps.

    Args:
        image_size: output side in pixels.
        steps: albumentations transforms, or Hydra dicts with ``_target_`` (None: no augmentation).
        resize: ``squash`` (plain resize), ``pad`` (keep aspect ratio, pad with black) or ``crop`` (the centred
            square of the short side, then resize: the sides of a non-square image are cut off).
        downsample_to: first resize every image to this side, then to ``image_size``, so a set that mixes
            native resolutions (the NIH sample: 64 and 256 px) carries the same detail in every image and
            a model cannot tell the sources apart by sharpness (area interpolation when shrinking, as image
            libraries downsample, bilinear when enlarging a smaller image; a 256 px NIH image reduced so
            differs from the 64 px release by ~0.1 % of the range on average). None: off.
        sized: the images are already ``image_size`` square (the prepared store at the input size): no resizing.

    Returns:
        An albumentations pipeline taking ``image=`` a uint8 (H, W, 1) array or a float32 one in [0, 1].
    """
    ops = _resize_ops(int(downsample_to), resize, area=True) if downsample_to else []
    ops += _resize_ops(image_size, resize)
    if sized:  # placeholders keep each augmentation step at its index, so it draws from the same seed
        ops = [A.NoOp() for _ in ops]
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


CPU_CHUNK_BYTES = 1 << 19  # result bytes per step of Normalize.batch on a CPU: within a core's L2 cache


class Normalize:
    """Image (H, W) -> tensor (C, H, W) standardised with the model's mean/std: the last step, after resizing and
    augmenting (on uint8 where the image is 8-bit: several times cheaper than float32 at the same size).

    A float image is in [0, 1]; a uint8 image is its grey levels 0-255 (scaled by 1/255 in the same step).

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
        self.pairs = [(float(m), float(s)) for m, s in zip(mean, std, strict=True)]
        # x / (scale std) - mean / std per channel, scale 255 for uint8 grey levels, 1 for [0, 1]
        self._gain = {
            scale: torch.tensor([1.0 / (s * scale) for _, s in self.pairs], dtype=torch.float32).view(-1, 1, 1)
            for scale in (1.0, 255.0)
        }
        self._offset = torch.tensor([-m / s for m, s in self.pairs], dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        image = np.ascontiguousarray(image)
        x = torch.from_numpy(image if image.flags.writeable else image.copy())  # torch refuses read-only arrays
        scale = 255.0 if x.dtype == torch.uint8 else 1.0
        out = torch.empty((self.in_chans, *x.shape), dtype=torch.float32)
        if x.numel() <= 512 * 512:  # one broadcast multiply, converting as it reads: 224 px in 0.05 ms, not 0.09
            torch.mul(x, self._gain[scale], out=out)
            return out.add_(self._offset)
        for c, (mean, std) in enumerate(self.pairs):  # a channel at a time: faster once the image outgrows the caches
            out[c].copy_(x).mul_(1.0 / (std * scale)).add_(-mean / std)
        return out

    def batch(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """A batch (N, 1, H, W), uint8 or float in [0, 1], on any device -> float32 (N, C, H, W): the same numbers
        as calling this on each image (the same two float32 operations).

        Args:
            x: the batch.
            out: the result is written into it when it is a float32 tensor of the result's shape on ``x``'s device
                (otherwise a new one is made). A loop over batches passes its previous result back: on a CPU each
                fresh result (19 MB for 32 images of 224 px in 3 channels) comes from new pages once glibc returns
                freed large blocks to the system, and faulting them in costs up to three times the arithmetic.

        On a CPU both operations run on a few images at a time (`CPU_CHUNK_BYTES` of result), so that the second
        reads the first's result from the core's cache rather than from memory (`bench.perf.normalise_batch` times
        both). A GPU gets the whole batch in one launch per operation.
        """
        scale = 255.0 if x.dtype == torch.uint8 else 1.0
        gain = self._gain[scale].to(x.device).view(1, -1, 1, 1)
        offset = self._offset.to(x.device).view(1, -1, 1, 1)
        shape = torch.broadcast_shapes(x.shape, gain.shape)
        if out is None or out.shape != shape or out.device != x.device or out.dtype != torch.float32:
            out = torch.empty(shape, dtype=torch.float32, device=x.device)
        per_image = out[0].nbytes if len(out) else 1
        step = max(1, CPU_CHUNK_BYTES // per_image) if x.device.type == "cpu" else max(1, len(out))
        for start in range(0, len(out), step):
            part = out[start : start + step]
            torch.mul(x[start : start + step], gain, out=part)
            part.add_(offset)
        return out


def unit_range(out: np.ndarray) -> np.ndarray:
    """An albumentations result (H, W[, 1]) as (H, W): uint8 as it is, float clipped to [0, 1]."""
    out = out[..., 0] if out.ndim == 3 else out
    return out if out.dtype == np.uint8 else np.clip(out, 0.0, 1.0)


def make_pipeline(transform: A.Compose, normalize: Normalize) -> Callable[[np.ndarray], torch.Tensor]:
    """Chains an albumentations pipeline and `Normalize` into image (H, W) -> tensor (C, H, W)."""

    def run(image: np.ndarray) -> torch.Tensor:
        return normalize(unit_range(transform(image=image[..., None])["image"]))

    return run


def check_intensity(dataset, normalize: Normalize, n: int = 16) -> dict:
    """Warns when normalised inputs look wrong (a common silent failure): ``n`` evenly spaced items of ``dataset``
    (uint8 items, ``data.gpu_augment``, normalised here with ``normalize``); returns their mean and std."""
    idx = np.linspace(0, len(dataset) - 1, min(n, len(dataset))).astype(int)
    x = torch.stack([dataset[int(i)]["image"] for i in idx])
    if x.dtype == torch.uint8:
        x = normalize.batch(x)
    stats = {"mean": float(x.mean()), "std": float(x.std())}
    if abs(stats["mean"]) > 2.0 or not 0.1 < stats["std"] < 5.0:
        log.warning(
            "Normalised inputs look out of range (mean %.2f, std %.2f; expected roughly 0 and 1): "
            "check the images' bit depth and the model's mean/std",
            stats["mean"],
            stats["std"],
        )
    return stats
