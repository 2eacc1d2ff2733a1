"""Integrated Gradients (Sundararajan et al. 2017) through captum, as an `Explainer`."""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from lungnet.explain.base import Explainer, LogitTarget, class_scores

log = logging.getLogger(__name__)


class IntegratedGradientsExplainer(Explainer):
    """|IG| summed over channels; the baseline is a black image in the model's normalisation.

    Args:
        model: the classifier.
        cam_layer: ignored (IG attributes to input pixels); accepted so all methods share one signature.
        n_steps: Riemann steps along the path.
        internal_batch_size: images per forward pass inside captum (bounds memory).
    """

    name = "ig"
    uses_layer = False

    def __init__(
        self,
        model: nn.Module,
        cam_layer: str | nn.Module | None = None,
        n_steps: int = 32,
        internal_batch_size: int = 32,
    ) -> None:
        super().__init__(model, cam_layer)
        self.n_steps = n_steps
        self.internal_batch_size = internal_batch_size

    def _baseline(self, images: torch.Tensor) -> torch.Tensor:
        spec = getattr(self.model, "spec", None)
        if spec is None:
            return torch.zeros_like(images)
        chans = images.shape[1]
        mean, std = np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
        if len(mean) != chans:  # a 1-channel model uses the mean of the means (as `Normalize`)
            mean, std = np.full(chans, mean.mean(), np.float32), np.full(chans, std.mean(), np.float32)
        black = torch.as_tensor(-mean / std, device=images.device).view(1, chans, 1, 1)
        return black.expand_as(images).contiguous()

    def attribute(self, images: torch.Tensor, targets: list[LogitTarget]) -> np.ndarray:
        from captum.attr import IntegratedGradients

        ig = IntegratedGradients(lambda x: class_scores(self.model(x)))
        attr = ig.attribute(
            images,
            baselines=self._baseline(images),
            target=[t.class_index for t in targets],
            n_steps=self.n_steps,
            internal_batch_size=self.internal_batch_size,
        )
        return attr.detach().abs().sum(dim=1).cpu().numpy()
