"""Class activation maps through pytorch-grad-cam, and `explain`, the one call for any method.

Each CAM variant overrides one method, `CamExplainer.build`, which returns the pytorch-grad-cam
object; the base class hooks the model's own ``spec.cam_layer`` (or an override) and releases the
hooks in ``__exit__``. pytorch-grad-cam's own ``__exit__`` swallows ``IndexError``; ours does not.

Example::

    from lungnet.explain import explain
    maps = explain(model, batch, method="gradcam")            # predicted class
    maps = explain(model, batch, method="hirescam", targets=[2] * len(batch))
    with make_explainer("scorecam", model) as explainer:      # several batches, hooks attached once
        maps = explainer(batch)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, ScoreCAM
from pytorch_grad_cam.base_cam import BaseCAM
from torch import nn

from lungnet.explain.base import Explainer, ExplainError, LogitTarget
from lungnet.explain.ig import IntegratedGradientsExplainer

log = logging.getLogger(__name__)


class CamExplainer(Explainer):
    """A pytorch-grad-cam method on one target layer; subclasses override `build`.

    Args:
        model: the classifier.
        cam_layer: dotted module path (or module); defaults to ``model.spec.cam_layer``.
    """

    name = "cam"

    def __init__(self, model: nn.Module, cam_layer: str | nn.Module | None = None) -> None:
        super().__init__(model, cam_layer)
        self.cam = self.build(self.model, [self.layer])

    def build(self, model: nn.Module, target_layers: list[nn.Module]) -> BaseCAM:
        """The pytorch-grad-cam object for this variant."""
        raise NotImplementedError

    def release(self) -> None:
        self.cam.activations_and_grads.release()
        self.cam.outputs = None  # the last forward's outputs hold the autograd graph
        self.model.zero_grad(set_to_none=True)  # the backward pass filled .grad: a second copy of the weights

    def attribute(self, images: torch.Tensor, targets: list[LogitTarget]) -> np.ndarray:
        # Gradients must reach the target layer even when the backbone is frozen.
        return self.cam(input_tensor=images.clone().requires_grad_(True), targets=targets)


class GradCamExplainer(CamExplainer):
    """Grad-CAM (Selvaraju et al. 2017): channels weighted by their mean gradient."""

    name = "gradcam"

    def build(self, model: nn.Module, target_layers: list[nn.Module]) -> BaseCAM:
        return GradCAM(model=model, target_layers=target_layers)


class GradCamPlusPlusExplainer(CamExplainer):
    """Grad-CAM++ (Chattopadhay et al. 2018): higher-order gradient weights, better for several objects."""

    name = "gradcampp"

    def build(self, model: nn.Module, target_layers: list[nn.Module]) -> BaseCAM:
        return GradCAMPlusPlus(model=model, target_layers=target_layers)


class HiResCamExplainer(CamExplainer):
    """HiResCAM (Draelos & Carin 2020): element-wise gradient x activation, faithful to the model."""

    name = "hirescam"

    def build(self, model: nn.Module, target_layers: list[nn.Module]) -> BaseCAM:
        return HiResCAM(model=model, target_layers=target_layers)


class _QuietScoreCAM(ScoreCAM):
    """pytorch-grad-cam's Score-CAM without its tqdm progress bar on stderr (same weights)."""

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads) -> np.ndarray:
        batch = getattr(self, "batch_size", 16)
        with torch.no_grad():
            act = torch.from_numpy(activations).to(self.device)
            up = torch.nn.functional.interpolate(act, size=input_tensor.shape[-2:], mode="bilinear", align_corners=True)
            flat = up.flatten(2)
            lo, hi = flat.min(dim=-1).values[..., None, None], flat.max(dim=-1).values[..., None, None]
            up = (up - lo) / (hi - lo + 1e-8)
            scores = []
            for target, image, masks in zip(targets, input_tensor, up, strict=True):
                for i in range(0, masks.shape[0], batch):
                    masked = image[None] * masks[i : i + batch, None]
                    scores += [float(target(o)) for o in self.model(masked)]
            scores = torch.tensor(scores).view(activations.shape[0], activations.shape[1])
            return torch.softmax(scores, dim=-1).numpy()


class ScoreCamExplainer(CamExplainer):
    """Score-CAM (Wang et al. 2020): one forward pass per channel of the layer (slow; gradient-free).

    Args:
        model: the classifier.
        cam_layer: target layer override.
        batch_size: masked images per forward pass.
    """

    name = "scorecam"

    def __init__(self, model: nn.Module, cam_layer: str | nn.Module | None = None, batch_size: int = 32) -> None:
        self.batch_size = batch_size
        super().__init__(model, cam_layer)

    def build(self, model: nn.Module, target_layers: list[nn.Module]) -> BaseCAM:
        cam = _QuietScoreCAM(model=model, target_layers=target_layers)
        cam.batch_size = self.batch_size
        return cam


class EigenCamExplainer(CamExplainer):
    """EigenCAM (Muhammad & Yeasin 2020): first principal component of the activations (class-agnostic)."""

    name = "eigencam"

    def build(self, model: nn.Module, target_layers: list[nn.Module]) -> BaseCAM:
        return EigenCAM(model=model, target_layers=target_layers)


METHODS: dict[str, type[Explainer]] = {
    cls.name: cls
    for cls in (
        GradCamExplainer,
        GradCamPlusPlusExplainer,
        HiResCamExplainer,
        ScoreCamExplainer,
        EigenCamExplainer,
        IntegratedGradientsExplainer,
    )
}


def list_methods() -> list[str]:
    """Names accepted by `explain` and `make_explainer`."""
    return list(METHODS)


def make_explainer(method: str, model: nn.Module, cam_layer: str | nn.Module | None = None, **options) -> Explainer:
    """Builds an explainer (use it in a ``with`` block so its hooks are released).

    Args:
        method: one of `list_methods`.
        model: the classifier.
        cam_layer: target layer override (dotted path inside the model); default ``model.spec.cam_layer``.
        **options: method options (``batch_size`` for scorecam, ``n_steps`` for ig).

    Raises:
        ExplainError: unknown method or layer.
    """
    try:
        cls = METHODS[method]
    except KeyError as exc:
        raise ExplainError(f"Unknown explanation method '{method}'; choose from {', '.join(METHODS)}") from exc
    return cls(model, cam_layer, **options)


def explain(
    model: nn.Module,
    images: torch.Tensor,
    method: str = "gradcam",
    targets: Sequence[int] | int | None = None,
    cam_layer: str | nn.Module | None = None,
    **options,
) -> np.ndarray:
    """Heatmaps for a batch with any method; hooks are attached and released inside.

    Args:
        model: the classifier (``model.spec.cam_layer`` gives the default target layer).
        images: normalised tensor (N, C, H, W) as the model takes it.
        method: gradcam, gradcampp, hirescam, scorecam, eigencam or ig.
        targets: class index per image (or one for all); None = the predicted class. For a multi-label
            model the index is the finding whose logit is explained; for a single-logit head 1 is
            positive and 0 negative.
        cam_layer: target-layer override.
        **options: method options (see `make_explainer`).

    Returns:
        float32 array (N, H, W) in [0, 1] at the input's height and width.
    """
    with make_explainer(method, model, cam_layer, **options) as explainer:
        return explainer(images, targets)
