"""What a checkpoint says about itself, checked before anything is built from it: a checkpoint is a file lungnet did
not write in this run, so every stored value is untrusted input.

The stored ``model`` and ``data`` blocks go through the schema and limits the command line goes through
(`lungnet.config_checks.check_stored`: image sizes up to `lungnet.schema.MAX_IMAGE_SIZE`); the model spec, labels
and thresholds through the checks below; the head's stored shape (``model.head_hidden``, one output per label)
is compared with the state dict's tensors before a layer is allocated; and every weight must be finite. A bad
value is one line naming the file, the key and what it accepts (`lungnet.errors.CheckpointError`, exit 2).
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import torch

from lungnet.config_checks import check_stored
from lungnet.data.splits import SPLITS
from lungnet.errors import CheckpointError, ConfigError
from lungnet.models.registry import head_shapes
from lungnet.models.specs import ModelSpec
from lungnet.models.weights import first_non_finite
from lungnet.schema import MAX_IMAGE_SIZE, DataConfig, ModelConfig

SPEC_KEYS = {f.name for f in dataclasses.fields(ModelSpec)}
HEX40 = re.compile(r"[0-9a-f]{40}")


def _short(value: Any) -> str:
    """``repr(value)`` cut to 60 characters (a stored value may be huge)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _refuse(path: Path, key: str, value: Any, accepts: str) -> CheckpointError:
    return CheckpointError(f"Checkpoint {path}: hyper_parameters.{key}={_short(value)} must be {accepts}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _numbers(value: Any, low: float, high: float, high_open: bool = False) -> bool:
    """``value`` is a non-empty list (or tuple) of finite numbers in [low, high] (or [low, high))."""
    if not isinstance(value, list | tuple) or not value:
        return False
    ok = [isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in value]
    return all(ok) and all(low <= x and (x < high if high_open else x <= high) for x in value)


def check_labels(hp: dict, path: Path) -> list[str]:
    """The stored labels: a non-empty list of distinct, non-empty strings; and ``multilabel`` true or false."""
    labels = hp["labels"]
    valid = isinstance(labels, list) and labels and all(isinstance(x, str) and x for x in labels)
    if not valid or len(set(labels)) != len(labels):
        raise _refuse(path, "labels", labels, "a non-empty list of distinct class names")
    if not isinstance(hp.get("multilabel"), bool):
        raise _refuse(path, "multilabel", hp.get("multilabel"), "true or false")
    return labels


def check_spec(spec: Any, labels: list[str], path: Path) -> None:
    """The stored model spec: the input contract every loader builds its preprocessing from."""
    if not isinstance(spec, dict) or not {"name", "arch", "mean", "std"} <= set(spec) or set(spec) - SPEC_KEYS:
        raise _refuse(path, "spec", spec, f"a mapping with name, arch, mean, std and only {sorted(SPEC_KEYS)}")
    size = spec.get("input_size", ModelSpec.input_size)
    if not _is_int(size) or not 8 <= size <= MAX_IMAGE_SIZE:
        raise _refuse(path, "spec.input_size", size, f"an integer in [8, {MAX_IMAGE_SIZE}]")
    if spec.get("in_chans", ModelSpec.in_chans) not in (1, 3):
        raise _refuse(path, "spec.in_chans", spec.get("in_chans"), "1 or 3")
    for key in ("mean", "std"):
        low = 1e-6 if key == "std" else -1e3
        if not _numbers(spec[key], low, 1e3) or len(spec[key]) > 3:
            raise _refuse(path, f"spec.{key}", spec[key], f"1 to 3 finite numbers in [{low}, 1000]")
    if spec.get("num_classes", len(labels)) != len(labels):
        raise _refuse(path, "spec.num_classes", spec.get("num_classes"), f"{len(labels)} (one per label)")
    for key in ("name", "arch", "cam_layer"):
        if not isinstance(spec.get(key, ""), str):
            raise _refuse(path, f"spec.{key}", spec[key], "a string")
    if not isinstance(spec.get("extra", {}), dict):
        raise _refuse(path, "spec.extra", spec["extra"], "a mapping")


def check_extras(hp: dict, labels: list[str], path: Path) -> None:
    """The training facts loaders read: ``extra.seed`` and the split
    fingerprint ``extra.splits`` (`lungnet.data.splits.split_fingerprint`: per split an image count and a digest)."""
    extra = hp.get("extra", {})
    if not isinstance(extra, dict):
        raise _refuse(path, "extra", extra, "a mapping")
    if not _is_int(extra.get("seed", 0)):
        raise _refuse(path, "extra.seed", extra["seed"], "an integer")
    splits = extra.get("splits") or {}
    accepts = "a mapping of train/val/test to {n: a count, digest: 40 hex digits}"
    if not isinstance(splits, dict) or set(splits) - set(SPLITS):
        raise _refuse(path, "extra.splits", splits, accepts)
    for name, part in splits.items():
        valid = isinstance(part, dict) and _is_int(part.get("n")) and part["n"] >= 0
        if not valid or not isinstance(part.get("digest"), str) or not HEX40.fullmatch(part["digest"]):
            raise _refuse(path, f"extra.splits.{name}", part, accepts)


def with_split_seed(data: dict, extra: dict) -> dict:
    """The stored data block with its ``split_seed``: a checkpoint made before ``data.split_seed`` existed was split
    by its training seed (``extra.seed``, 0 when unrecorded), which then stands for it."""
    if "split_seed" in data:
        return data
    return {**data, "split_seed": int(extra.get("seed", 0)) if isinstance(extra, dict) else 0}


def check_weights(state: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict: tensors under string keys, every floating-point one finite."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"Checkpoint {path}: state_dict must map names to tensors")
    bad = first_non_finite(state)
    if bad is not None:
        raise CheckpointError(
            f"Checkpoint {path}: state_dict tensor {bad} holds NaN or inf values (weights must be finite; the "
            "training diverged, or the file was altered)"
        )
    return state


def check_head(state: dict, model: dict, labels: list[str], path: Path) -> None:
    """The head ``model.head_hidden`` and the labels describe is the one the state dict holds (checked before the
    model is built, so a stored width cannot allocate more than the file's own tensors)."""
    hidden = model.get("head_hidden", ModelConfig.head_hidden)
    for key, expected in head_shapes(len(labels), hidden).items():
        tensor = state.get(f"model.{key}")
        actual = tuple(tensor.shape) if tensor is not None else None
        fits = actual is not None and len(actual) == 2
        if not fits or any(e is not None and e != a for e, a in zip(expected, actual, strict=True)):
            shape = "absent" if actual is None else f"of shape {actual}"
            raise CheckpointError(
                f"Checkpoint {path}: hyper_parameters.model.head_hidden={hidden} with {len(labels)} labels needs "
                f"head tensor {key} of shape ({', '.join('*' if e is None else str(e) for e in expected)}); the "
                f"state dict's is {shape} (a head trained for another number of classes?)"
            )


def check_checkpoint(ckpt: dict, path: Path) -> dict:
    """Every value `lungnet.artifacts.checkpoint.read_checkpoint` hands on, checked; returns ``ckpt`` with its stored
    ``model`` and ``data`` blocks converted to their schema types.

    Raises:
        CheckpointError: one line naming the file, the key and what it accepts.
    """
    hp = dict(ckpt["hyper_parameters"])
    labels = check_labels(hp, path)
    where = f"Checkpoint {path}"
    try:
        hp["model"] = check_stored(hp["model"], ModelConfig, where, "hyper_parameters.model.")
        hp["data"] = check_stored(hp.get("data") or {}, DataConfig, where, "hyper_parameters.data.")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc
    if not isinstance(hp["model"].get("name"), str):
        raise _refuse(path, "model.name", hp["model"].get("name"), "a model name")
    legacy = hp["model"].get("image_size")  # stored by lungnet before data.image_size became the one setting
    if legacy is not None and not (_is_int(legacy) and 8 <= legacy <= MAX_IMAGE_SIZE):
        raise _refuse(path, "model.image_size", legacy, f"null or an integer in [8, {MAX_IMAGE_SIZE}]")
    state = check_weights(ckpt["state_dict"], path)
    check_head(state, hp["model"], labels, path)
    check_spec(hp["spec"], labels, path)
    check_extras(hp, labels, path)
    hp["data"] = with_split_seed(hp["data"], hp.get("extra", {}))
    return {**ckpt, "hyper_parameters": hp}
