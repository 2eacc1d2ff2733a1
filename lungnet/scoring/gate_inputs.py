"""What the OOD gate (`lungnet.scoring.ood`) scores per image, and the statistics it is fitted from.

A gate input is the model's pooled backbone features (D columns), then a ``THUMB`` x ``THUMB`` grey thumbnail of the
model's own preprocessed input (`gate_inputs`). `ImageGate` scores the features and the thumbnail standardised per
image (`layout`) apart (`split_inputs`), each fitted from its `lungnet.scoring.scatter.Scatter` (`gate_scatters`).
"""

from __future__ import annotations

import numpy as np

from lungnet.scoring.scatter import Scatter

THUMB = 16  # side of the grey thumbnail of the model input the image part scores
CONTRAST_FLOOR = 1e-2  # a thumbnail with less contrast (std) than this is scored as flat (blank)

GateScatters = tuple[Scatter, Scatter]  # what `lungnet.scoring.ood.ImageGate` is fitted from: features', thumbnails'


def gate_inputs(features, batch) -> np.ndarray:
    """What a gate scores, per image: the pooled features (N, D), then a ``THUMB`` x ``THUMB`` thumbnail of the
    model's input batch (N, C, H, W; channel mean, area-averaged): (N, D + THUMB**2) float32."""
    import torch

    thumbs = torch.nn.functional.adaptive_avg_pool2d(batch.float().mean(1, keepdim=True), THUMB).flatten(1)
    return np.concatenate([features.float().cpu().numpy(), thumbs.cpu().numpy()], axis=1)


def layout(thumbnails: np.ndarray) -> np.ndarray:
    """Thumbnails standardised per image: zero mean, unit standard deviation (flat ones: all zeros)."""
    centred = thumbnails - thumbnails.mean(1, keepdims=True)
    contrast = centred.std(1, keepdims=True)
    return np.where(contrast > CONTRAST_FLOOR, centred / np.maximum(contrast, CONTRAST_FLOOR), 0.0)


def split_inputs(inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two parts `ImageGate` fits: the feature columns and the standardised thumbnails (`layout`), float32.

    Args:
        inputs: (N, D + THUMB**2) gate inputs.

    Raises:
        ValueError: ``inputs`` hold no feature column before the ``THUMB**2`` thumbnail columns.
    """
    x = np.asarray(inputs, dtype=np.float32)
    width = x.shape[1] - THUMB * THUMB
    if width < 1:
        raise ValueError(f"gate inputs of width {x.shape[1]} hold no features before the {THUMB}x{THUMB} thumbnail")
    return x[:, :width], layout(x[:, width:]).astype(np.float32, copy=False)


def gate_scatters(inputs: np.ndarray, classes: np.ndarray | None = None, device=None) -> GateScatters:
    """The statistics `ImageGate` is fitted from, of each part (`split_inputs`).

    Args:
        inputs: (N, D + THUMB**2) gate inputs of the training images.
        classes: (N,) class indices (single-label), or None (multi-label: one mean).
        device: a torch device for the squares (`lungnet.scoring.scatter.squares_about`); None: the host.
    """
    features, thumbnails = split_inputs(inputs)
    return Scatter.of(features, classes, device), Scatter.of(thumbnails, classes, device)
