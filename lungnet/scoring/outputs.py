"""The one model-output loop: a model's probabilities over a DataLoader (`model_outputs`) or a batch of image files
(`file_probabilities`), and the predictions table."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lungnet.data.dataset import bytes_out
from lungnet.data.images import read_image
from lungnet.data.labels import DEFAULT_THRESHOLD, NO_FINDING, join_flags
from lungnet.data.preprocessing import logits_to_probs
from lungnet.scoring.gate_inputs import gate_inputs

log = logging.getLogger(__name__)


@dataclass
class Outputs:
    """A model's outputs on one split.

    Attributes:
        name: the split.
        probs: (N, C) probabilities (softmax, or sigmoid for multi-label), uncalibrated.
        targets: (N,) class indices or (N, C) multi-label targets.
        paths: image files.
        logits: (N, C) logits.
        features: (N, D + THUMB**2) OOD gate inputs (`lungnet.scoring.gate_inputs.gate_inputs`: pooled backbone
            features, then a thumbnail of the model input), when asked for.
    """

    name: str
    probs: np.ndarray
    targets: np.ndarray
    paths: list[str]
    logits: np.ndarray
    features: np.ndarray | None = None


@torch.no_grad()
def model_outputs(
    model: nn.Module,
    loader: DataLoader,
    multilabel: bool,
    device: str | torch.device = "cpu",
    desc: str = "Predicting",
    features: bool = False,
    name: str = "",
) -> Outputs:
    """Logits, probabilities, targets, paths (and penultimate features) for every item of ``loader``.

    Images of an evaluation data set read from the prepared store come as uint8 and are normalised per batch on
    ``device`` (`lungnet.data.dataset.bytes_out`): the same numbers, and the loader only copies bytes. Equal-sized
    batches are normalised into one tensor (`lungnet.data.transforms.Normalize.batch`'s ``out``): the model has
    finished with a batch before the next is written.

    Args:
        features: also keep ``model.backbone``'s pooled features (lungnet `Classifier`: head(backbone(x))).
    """
    model = model.to(device).eval()
    logits, feats, targets, paths = [], [], [], []
    normalised = None  # one result tensor the byte batches are normalised into, batch after batch
    # from the prepared store the loader only copies bytes (its workers start here, with the uint8 pipeline; workers
    # started before keep theirs, and their float batches pass as they are)
    with bytes_out(getattr(loader, "dataset", None)) as normalize:
        for batch in tqdm(loader, desc=desc, unit="batch", leave=False):
            x = batch["image"].to(device)
            if normalize is not None and x.dtype == torch.uint8:
                x = normalised = normalize.batch(x, out=normalised)
            if features:
                z, gate = logits_and_gate_inputs(model, x)
                feats.append(gate)
            else:
                z = model(x)
            logits.append(z.float().cpu().numpy())
            targets.append(batch["target"].numpy())
            paths += list(batch["path"])
    z = np.concatenate(logits)
    return Outputs(
        name,
        logits_to_probs(z, multilabel),
        np.concatenate(targets),
        paths,
        z,
        np.concatenate(feats) if feats else None,
    )


def logits_and_gate_inputs(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    """A lungnet `Classifier`'s logits (head(backbone(x))) and the OOD gate's inputs (`gate_inputs`: the pooled
    backbone features, then a thumbnail of ``x``) from one forward pass: what `model_outputs` and the training's
    validation pass (`lungnet.train.module.LitClassifier.validation_step`) keep alike."""
    pooled = model.backbone(x)
    return model.head(pooled), gate_inputs(pooled, x)


def predict_loader(
    model: nn.Module, loader: DataLoader, multilabel: bool, device: str | torch.device = "cpu", desc: str = "Predicting"
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Probabilities, targets and paths for every item of ``loader`` (with a progress bar).

    Returns:
        (probs (N, C), targets (N,) or (N, C), paths).
    """
    out = model_outputs(model, loader, multilabel, device, desc)
    return out.probs, out.targets, out.paths


@torch.no_grad()
def file_probabilities(
    model: nn.Module, paths: list[str], transform, multilabel: bool, batch_size: int = 32
) -> tuple[np.ndarray, torch.Tensor | None]:
    """Probabilities (N, C) of image files read and transformed by ``transform`` (a checkpoint's preprocessing), and
    the last input batch (the caller explains it).

    For a few files in the main process (explanations pick and score a handful of images); a split goes through a
    DataLoader with `model_outputs`.
    """
    model = model.eval()
    device = next(model.parameters()).device
    out, batch = [], None
    for i in range(0, len(paths), batch_size):
        batch = torch.stack([transform(read_image(p)) for p in paths[i : i + batch_size]]).to(device)
        out.append(logits_to_probs(model(batch), multilabel).float().cpu().numpy())
    return (np.concatenate(out) if out else np.zeros((0, 0), np.float32)), batch


def predictions_table(
    paths: list[str],
    probs: np.ndarray,
    targets: np.ndarray | None,
    labels: list[str],
    multilabel: bool,
) -> pd.DataFrame:
    """One row per image: file, true label(s), predicted label, probability per class.

    Single-label: ``predicted`` is the arg-max. Multi-label: ``predicted`` lists findings with probability at or
    above `lungnet.data.labels.DEFAULT_THRESHOLD` (the decision record's thresholds decide in
    `lungnet.artifacts.decision`).
    """
    table = pd.DataFrame({"path": paths})
    if targets is not None:
        if multilabel:
            table["true"] = join_flags(np.asarray(targets) == 1, labels, NO_FINDING)
        else:
            table["true"] = [labels[int(t)] for t in targets]
    if multilabel:
        table["predicted"] = join_flags(np.asarray(probs) >= DEFAULT_THRESHOLD, labels, NO_FINDING)
    else:
        table["predicted"] = [labels[int(i)] for i in probs.argmax(1)]
        table["confidence"] = probs.max(1)
    if targets is not None and not multilabel:
        table["correct"] = table["true"] == table["predicted"]
    for j, lab in enumerate(labels):
        table[f"p_{lab}"] = probs[:, j]
    return table
