"""lungnet.scoring.metrics: the module's epoch AUROC with findings no image annotates (data=multi)."""

from __future__ import annotations

import math

import torch
from torchmetrics.classification import MultilabelAUROC

from lungnet.scoring.metrics import IGNORE, metric_collection


def _batch(seed: int, n: int = 40, labels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = (torch.rand(n, labels, generator=g) > 0.5).long()
    preds = (0.6 * target + 0.4 * torch.rand(n, labels, generator=g)).clamp(0, 1)
    return preds, target


def test_auroc_skips_a_finding_no_image_annotates_and_otherwise_equals_torchmetrics():
    preds, target = _batch(0)
    full = metric_collection(3, multilabel=True)
    full.update(preds, target)
    reference = MultilabelAUROC(num_labels=3, average="macro", ignore_index=IGNORE)
    reference.update(preds, target)
    assert math.isclose(float(full.compute()["auroc"]), float(reference.compute()), rel_tol=1e-6)

    masked = target.clone()
    masked[:, 2] = IGNORE  # the third finding is annotated by no image of this split
    partial = metric_collection(3, multilabel=True)
    partial.update(preds, masked)
    two = MultilabelAUROC(num_labels=2, average="macro")
    two.update(preds[:, :2], target[:, :2])
    assert math.isclose(float(partial.compute()["auroc"]), float(two.compute()), rel_tol=1e-6)
