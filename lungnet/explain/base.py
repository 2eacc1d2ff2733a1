"""The explainer base class: a context manager that owns its hooks, plus class targets and map scaling.

Every explainer turns a normalised batch (N, C, H, W) into heatmaps (N, H, W) float32 in [0, 1] at
the input's height and width. Subclasses override one method, `attribute`, and release whatever
they attached in `release` (called by ``__exit__``, which never swallows an exception).

Targets follow one convention for all heads:

- multi-class (softmax) and multi-label (sigmoid): class ``k`` is logit ``k`` (sigmoid and softmax
  are monotone in it, so the logit is the usual Grad-CAM target);
- binary single-logit head: class 1 is the logit ``z`` ("positive") and class 0 is ``-z``
  ("negative"); pytorch-grad-cam's ``ClassifierOutputTarget(0)`` would always explain "positive".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from lungnet.models.registry import ModelError

log = logging.getLogger(__name__)


class ExplainError(ModelError):
    """A method, layer or target that cannot be explained; the message says what is valid."""


class LogitTarget:
    """Scalar to explain for one image, given that image's output vector (pytorch-grad-cam target API).

    Args:
        class_index: the class to explain. For a single-logit head, 1 = positive (``z``), 0 = negative (``-z``).
    """

    def __init__(self, class_index: int) -> None:
        self.class_index = int(class_index)

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if output.ndim == 2:  # a batch: pytorch-grad-cam passes single rows, captum-style callers batches
            return torch.stack([self(row) for row in output])
        if output.shape[-1] == 1:
            if self.class_index not in (0, 1):
                msg = f"A single-logit head has classes 0 (negative) and 1 (positive), not {self.class_index}"
                raise ExplainError(msg)
            return output[0] if self.class_index == 1 else -output[0]
        return output[self.class_index]

    def __repr__(self) -> str:
        return f"LogitTarget({self.class_index})"


def class_scores(logits: torch.Tensor) -> torch.Tensor:
    """(N, K) logits -> (N, K') per-class scores with the `LogitTarget` convention ((N, 1) -> [-z, z])."""
    if logits.ndim == 1:
        logits = logits[:, None]
    return torch.cat([-logits, logits], dim=1) if logits.shape[1] == 1 else logits


def predicted_classes(logits: torch.Tensor) -> list[int]:
    """The class each image is explained for by default: argmax, or ``z > 0`` for a single logit.

    Multi-label models get their most probable finding (the argmax of the logits).
    """
    return [int(i) for i in class_scores(logits).argmax(dim=1).tolist()]


def resolve_layer(model: nn.Module, cam_layer: str | nn.Module | None) -> nn.Module:
    """The module to hook: an explicit module, a dotted path, or ``model.spec.cam_layer``.

    Raises:
        ExplainError: no layer given and none in the spec, or a path that does not exist.
    """
    if isinstance(cam_layer, nn.Module):
        return cam_layer
    name = cam_layer or getattr(getattr(model, "spec", None), "cam_layer", "")
    if not name:
        raise ExplainError("No target layer: pass cam_layer='backbone.<module>' (the model has no spec.cam_layer)")
    try:
        return model.get_submodule(name)
    except AttributeError as exc:
        names = [n for n, _ in model.named_modules() if n][-5:]
        raise ExplainError(f"Target layer '{name}' not in the model; the last modules are {names}") from exc


def scale_maps(maps: np.ndarray | torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Resizes (N, h, w) maps to ``size`` (bilinear) and min-max scales each to [0, 1].

    Non-finite values become 0; a constant map becomes all zeros.
    """
    t = torch.as_tensor(np.asarray(maps, dtype=np.float32))
    t = torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0)
    if tuple(t.shape[-2:]) != tuple(size):
        t = torch.nn.functional.interpolate(t[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    flat = t.reshape(t.shape[0], -1)
    lo, hi = flat.min(dim=1).values[:, None, None], flat.max(dim=1).values[:, None, None]
    span = hi - lo
    out = torch.where(span > 1e-12, (t - lo) / span.clamp_min(1e-12), torch.zeros_like(t))
    return out.clamp(0.0, 1.0).numpy().astype(np.float32)


class Explainer:
    """Base class: heatmaps for a batch; a context manager whose ``__exit__`` releases hooks.

    Args:
        model: the classifier (put in eval mode).
        cam_layer: target layer (dotted path or module); defaults to ``model.spec.cam_layer``. Used by CAMs.
    """

    name = "base"
    uses_layer = True

    def __init__(self, model: nn.Module, cam_layer: str | nn.Module | None = None) -> None:
        self.model = model.eval()
        self.layer = resolve_layer(model, cam_layer) if self.uses_layer else None
        self.last_targets: list[int] = []

    def __enter__(self) -> Explainer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release()  # returns None: exceptions raised inside ``with`` propagate

    def release(self) -> None:
        """Removes every hook this explainer attached (idempotent)."""

    def attribute(self, images: torch.Tensor, targets: list[LogitTarget]) -> np.ndarray:
        """Raw maps (N, h, w) for the given targets; the one method a variant overrides."""
        raise NotImplementedError

    def __call__(self, images: torch.Tensor, targets: Sequence[int] | int | None = None) -> np.ndarray:
        """Heatmaps (N, H, W) float32 in [0, 1] at the input's size.

        Args:
            images: normalised batch (N, C, H, W) as the model takes it.
            targets: class index per image (or one for all); None = each image's predicted class.
        """
        if images.ndim != 4:
            raise ExplainError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        device = next(self.model.parameters()).device
        images = images.detach().to(device, torch.float32)
        if targets is None:
            with torch.no_grad():
                classes = predicted_classes(self.model(images))
        elif isinstance(targets, (int, np.integer)):
            classes = [int(targets)] * images.shape[0]
        else:
            classes = [int(t) for t in targets]
        if len(classes) != images.shape[0]:
            raise ExplainError(f"{len(classes)} targets for {images.shape[0]} images")
        self.last_targets = classes
        with torch.enable_grad():
            raw = self.attribute(images, [LogitTarget(c) for c in classes])
        return scale_maps(raw, tuple(images.shape[-2:]))
