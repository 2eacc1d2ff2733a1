"""``data.gpu_augment``: the ``augment`` steps applied to a whole batch on the accelerator, each image its own draw.

With ``data.gpu_augment=true`` the training loader only resizes (or, from the prepared store, copies bytes) and
hands over uint8 batches; `lungnet.train.module.LitClassifier.on_after_batch_transfer` runs `BatchAugment` on the
device and normalises last. The albumentations steps of ``conf/augment`` are mirrored in batched torch code
(torchvision's v2 transforms draw one set of parameters per batch, and kornia is not a dependency):

- ``Affine``: ``scale`` (a range, or ``{x:, y:}`` ranges with ``keep_ratio: false``), ``translate_percent``,
  ``rotate``, ``shear`` (degrees, along x), zero borders;
- ``RandomBrightnessContrast``: ``brightness_limit`` (a share of the maximum), ``contrast_limit``;
- ``RandomGamma``: ``gamma_limit`` (percent);
- ``GaussNoise``: ``std_range`` (a share of the maximum), zero mean;
- ``CoarseDropout``: ``num_holes_range``, ``hole_height_range`` / ``hole_width_range`` (shares of the side), ``fill``.

Each step keeps its probability ``p``. Random draws come from a generator seeded by (run seed, global step), so a
resumed run draws as an uninterrupted one does. Other steps are refused with a message naming them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from lungnet.data.dataset import derive_seed
from lungnet.errors import ConfigError


def _range(value, default: tuple[float, float], symmetric: bool = True) -> tuple[float, float]:
    """An albumentations range: a number ``v`` is (-v, v) (or (v, v) when not symmetric), a pair is itself."""
    if value is None:
        return default
    if isinstance(value, int | float):
        return (-float(value), float(value)) if symmetric else (float(value), float(value))
    lo, hi = (float(v) for v in value)
    return lo, hi


def _uniform(gen: torch.Generator, n: int, bounds: tuple[float, float]) -> torch.Tensor:
    lo, hi = bounds
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def _affine(x: torch.Tensor, opts: dict, gen: torch.Generator) -> torch.Tensor:
    n = len(x)
    scale = opts.get("scale", (1.0, 1.0))
    if isinstance(scale, dict):
        sx, sy = _uniform(gen, n, _range(scale["x"], (1, 1))), _uniform(gen, n, _range(scale["y"], (1, 1)))
    else:
        sx = _uniform(gen, n, _range(scale, (1, 1), symmetric=False))
        sy = sx if opts.get("keep_ratio", True) else _uniform(gen, n, _range(scale, (1, 1), symmetric=False))
    tx = _uniform(gen, n, _range(opts.get("translate_percent"), (0, 0))) * 2  # grid units span 2
    ty = _uniform(gen, n, _range(opts.get("translate_percent"), (0, 0))) * 2
    rot = _uniform(gen, n, _range(opts.get("rotate"), (0, 0))) * math.pi / 180
    shear = torch.tan(_uniform(gen, n, _range(opts.get("shear"), (0, 0))) * math.pi / 180)
    cos, sin = torch.cos(rot), torch.sin(rot)
    # forward map: scale, shear, rotate, translate; grid_sample needs its inverse (output -> input coordinates)
    fwd = torch.zeros(n, 3, 3)
    fwd[:, 0, 0], fwd[:, 0, 1], fwd[:, 0, 2] = cos * sx, cos * sx * shear - sin * sy, tx
    fwd[:, 1, 0], fwd[:, 1, 1], fwd[:, 1, 2] = sin * sx, sin * sx * shear + cos * sy, ty
    fwd[:, 2, 2] = 1
    theta = torch.linalg.inv(fwd)[:, :2].to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _brightness_contrast(x: torch.Tensor, opts: dict, gen: torch.Generator) -> torch.Tensor:
    n = len(x)
    alpha = 1 + _uniform(gen, n, _range(opts.get("contrast_limit", 0.2), (0, 0)))
    beta = _uniform(gen, n, _range(opts.get("brightness_limit", 0.2), (0, 0)))
    return x * alpha.to(x).view(-1, 1, 1, 1) + beta.to(x).view(-1, 1, 1, 1)


def _gamma(x: torch.Tensor, opts: dict, gen: torch.Generator) -> torch.Tensor:
    gamma = _uniform(gen, len(x), _range(opts.get("gamma_limit", (80, 120)), (80, 120), symmetric=False)) / 100
    return x.clamp(0, 1).pow(gamma.to(x).view(-1, 1, 1, 1))


def _noise(x: torch.Tensor, opts: dict, gen: torch.Generator) -> torch.Tensor:
    std = _uniform(gen, len(x), _range(opts.get("std_range", (0.2, 0.44)), (0.2, 0.44), symmetric=False))
    device_gen = torch.Generator(device=x.device).manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
    return x + torch.randn(x.shape, generator=device_gen, device=x.device, dtype=x.dtype) * std.to(x).view(-1, 1, 1, 1)


def _dropout(x: torch.Tensor, opts: dict, gen: torch.Generator) -> torch.Tensor:
    n, _, height, width = x.shape
    lo, hi = (int(v) for v in _range(opts.get("num_holes_range", (1, 1)), (1, 1), symmetric=False))
    holes = hi  # every image draws hi holes; those past its own count are empty
    count = torch.randint(lo, hi + 1, (n, 1), generator=gen)
    h = (_uniform(gen, n * holes, _range(opts.get("hole_height_range"), (0.1, 0.1), False)) * height).view(n, holes)
    w = (_uniform(gen, n * holes, _range(opts.get("hole_width_range"), (0.1, 0.1), False)) * width).view(n, holes)
    top = torch.rand(n, holes, generator=gen) * (height - h)
    left = torch.rand(n, holes, generator=gen) * (width - w)
    live = torch.arange(holes).view(1, -1) < count
    rows = torch.arange(height).view(1, 1, -1, 1)
    cols = torch.arange(width).view(1, 1, 1, -1)
    inside = (rows >= top[..., None, None].floor()) & (rows < (top + h)[..., None, None].floor())
    inside = inside & (cols >= left[..., None, None].floor()) & (cols < (left + w)[..., None, None].floor())
    mask = (inside & live[..., None, None]).any(dim=1, keepdim=True).to(x.device)
    return torch.where(mask, torch.as_tensor(float(opts.get("fill", 0)) / 255.0, device=x.device, dtype=x.dtype), x)


STEPS = {
    "Affine": _affine,
    "RandomBrightnessContrast": _brightness_contrast,
    "RandomGamma": _gamma,
    "GaussNoise": _noise,
    "CoarseDropout": _dropout,
}


class BatchAugment:
    """uint8 (N, 1, H, W) batch -> augmented float (N, 1, H, W) in [0, 1], on the batch's device.

    Args:
        steps: ``(name, options)`` pairs, options including the probability ``p``.
        seed: the run seed.
    """

    def __init__(self, steps: Sequence[tuple[str, dict]], seed: int) -> None:
        self.steps = list(steps)
        self.seed = int(seed)

    @classmethod
    def from_steps(cls, steps: Sequence | None, seed: int) -> BatchAugment:
        """From ``augment.train`` (albumentations ``_target_`` dicts).

        Raises:
            ConfigError: a step without a batch version, naming it and the supported ones.
        """
        parsed = []
        for step in steps or []:
            name = str(dict(step).get("_target_", "")).rsplit(".", 1)[-1]
            if name not in STEPS:
                raise ConfigError(
                    f"augment.train: {name or repr(step)} has no batch version for data.gpu_augment=true "
                    f"(supported: {', '.join(STEPS)}); set data.gpu_augment=false or drop the step"
                )
            parsed.append((name, {k: v for k, v in dict(step).items() if k != "_target_"}))
        return cls(parsed, seed)

    def __call__(self, images: torch.Tensor, step: int) -> torch.Tensor:
        """Augments one batch; ``step`` (the global step) and the seed decide every draw."""
        gen = torch.Generator().manual_seed(derive_seed(self.seed, int(step), 0xA06))
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        for name, opts in self.steps:
            chosen = torch.rand(len(x), generator=gen) < float(opts.get("p", 0.5))
            if chosen.any():
                out = STEPS[name](x, opts, gen)
                x = torch.where(chosen.to(x.device).view(-1, 1, 1, 1), out, x)
        return x.clamp_(0.0, 1.0)
