"""Scoring heatmaps against ground truth: pointing game, energy share, and the randomisation sanity check.

- Pointing game (Zhang et al. 2016, "Top-down neural attention by excitation backprop"): a hit when
  the heatmap's maximum lies inside the lesion, with a tolerance of 15 px at 224 px (scaled with the
  image side).
- Energy share: the fraction of the heatmap's mass inside the lesion.
- Model randomisation (Adebayo et al. 2018, "Sanity checks for saliency maps"): maps from a model with
  re-initialised weights must differ from the trained model's; we report their Spearman rank
  correlation (close to 1 = the method ignores what the model learnt).

Scores are computed at the ORIGINAL image resolution: heatmaps are resized up to the mask.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage, stats
from torch import nn

from lungnet.explain.overlay import resize_map

log = logging.getLogger(__name__)

TOLERANCE_AT_224 = 15.0


@dataclass
class Case:
    """One image with a ground-truth lesion for one class.

    Attributes:
        path: image file.
        class_index: the model output the lesion belongs to (the class explained).
        class_name: its label.
        mask: boolean lesion mask at the image's original resolution.
    """

    path: str
    class_index: int
    class_name: str
    mask: np.ndarray


def tolerance_px(shape: tuple[int, int], at_224: float = TOLERANCE_AT_224) -> float:
    """The pointing-game tolerance for an image of ``shape``: 15 px at 224, proportional to the longer side."""
    return at_224 * max(shape) / 224.0


def _check_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or not mask.any():
        raise ValueError(f"a ground-truth mask must be 2-D and non-empty, got shape {mask.shape}, {mask.sum()} px")
    return mask


def pointing_hit(heatmap: np.ndarray, mask: np.ndarray, tolerance: float | None = None) -> bool:
    """True when the heatmap's maximum lies within ``tolerance`` px of the lesion.

    Args:
        heatmap: map of any size (resized to the mask).
        mask: boolean lesion mask (original resolution).
        tolerance: distance in mask pixels; None = `tolerance_px` of the mask's shape.

    Returns:
        The hit; a constant map (no maximum) is a miss.
    """
    mask = _check_mask(mask)
    heat = resize_map(heatmap, mask.shape)
    if float(heat.max() - heat.min()) <= 1e-12:
        return False
    tol = tolerance_px(mask.shape) if tolerance is None else tolerance
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    distance = ndimage.distance_transform_edt(~mask)[peak]
    return bool(distance <= tol)


def energy_share(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of the heatmap's mass inside the lesion (NaN for an all-zero map)."""
    mask = _check_mask(mask)
    heat = resize_map(heatmap, mask.shape)
    total = float(heat.sum())
    return float(heat[mask].sum() / total) if total > 0 else float("nan")


def chance_levels(mask: np.ndarray, tolerance: float | None = None) -> tuple[float, float]:
    """What an uninformative map scores: (hit rate of a uniformly random peak, energy share of a flat map)."""
    mask = _check_mask(mask)
    tol = tolerance_px(mask.shape) if tolerance is None else tolerance
    near = ndimage.distance_transform_edt(~mask) <= tol
    return float(near.mean()), float(mask.mean())


def randomized_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with every layer re-initialised (Adebayo et al.'s full randomisation).

    Every submodule with ``reset_parameters`` (convolutions, linear and normalisation layers) is
    reset, so learnt weights and running statistics are gone; the spec is kept.
    """
    clone = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        n = 0
        for module in clone.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
                n += 1
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                module.reset_running_stats()
    log.debug("Re-initialised %d modules", n)
    return clone.eval()


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation of two maps (resized to ``a``'s shape); NaN when either is constant."""
    a = np.asarray(a, dtype=np.float32)
    b = resize_map(b, a.shape) if np.shape(b) != a.shape else np.asarray(b, dtype=np.float32)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a.ravel(), b.ravel()).statistic)


def box_mask(
    shape: tuple[int, int], boxes: list[tuple[float, float, float, float]], scale: float | tuple[float, float] = 1.0
) -> np.ndarray:
    """Boolean mask of the union of boxes (x, y, w, h), multiplied by ``scale`` (or (sx, sy)) into the image's pixels.

    Pixels whose centres fall in a box are set; a box thinner than a pixel still marks one pixel.
    """
    sx, sy = (scale, scale) if np.isscalar(scale) else scale
    mask = np.zeros(shape, dtype=bool)
    for x, y, w, h in boxes:
        x0, y0 = x * sx, y * sy
        x1, y1 = (x + w) * sx, (y + h) * sy
        c0, r0 = int(np.clip(np.floor(x0), 0, shape[1] - 1)), int(np.clip(np.floor(y0), 0, shape[0] - 1))
        c1 = int(np.clip(np.ceil(x1), c0 + 1, shape[1]))
        r1 = int(np.clip(np.ceil(y1), r0 + 1, shape[0]))
        mask[r0:r1, c0:c1] = True
    return mask


def wilson_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (NaN, NaN when ``n`` is 0)."""
    if n == 0:
        return float("nan"), float("nan")
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)
