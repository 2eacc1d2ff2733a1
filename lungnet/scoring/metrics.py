"""Classification metrics shared by training (torchmetrics, per step) and evaluation (on arrays).

Single-label: accuracy, macro and per-class precision/recall/F1, AUROC and the confusion matrix.
Multi-label: unknown targets (NaN) are masked; per-finding and macro AUROC, F1 at 0.5.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
    MultilabelAUROC,
    MultilabelF1Score,
)
from torchmetrics.functional.classification import (
    binary_auroc,
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
    multilabel_f1_score,
)
from torchmetrics.utilities.data import dim_zero_cat

IGNORE = -1

# An AUROC over a batch, an epoch or a split that lacks a class's positives (or negatives) is undefined; torchmetrics
# warns at every such computation (the sanity check, small validation splits, rare findings) and scores the class 0.
# The per-class tables of evaluation report the class counts; the warning itself says nothing about the run.
warnings.filterwarnings("ignore", message=r"No (negative|positive) samples (in|found in) target", category=UserWarning)


def macro(values, present) -> float:
    """Macro average over the classes the data hold (``present``: one bool per class; recall and F1 of a class
    without images are undefined); NaN when none is present."""
    keep = np.asarray(torch.as_tensor(present).tolist(), dtype=bool)
    return float(np.asarray(values, dtype=np.float64)[keep].mean()) if keep.any() else float("nan")


class KnownMultilabelAUROC(MultilabelAUROC):
    """Macro multi-label AUROC over the findings some image annotates (``data=multi``: a finding one source does not
    annotate can have no known target in a batch or a split, where torchmetrics' own compute raises IndexError); the
    same value as `MultilabelAUROC` whenever every finding has a known target."""

    def compute(self) -> torch.Tensor:
        target = dim_zero_cat(self.target)
        known = (target != IGNORE).any(0) if target.numel() else torch.zeros(self.num_labels, dtype=torch.bool)
        if bool(known.all()):
            return super().compute()
        preds = dim_zero_cat(self.preds)
        scores = [
            binary_auroc(preds[target[:, j] != IGNORE, j], target[target[:, j] != IGNORE, j])
            for j in torch.nonzero(known).flatten().tolist()
        ]
        return torch.stack(scores).mean() if scores else torch.tensor(float("nan"))


def metric_collection(num_classes: int, multilabel: bool) -> MetricCollection:
    """Epoch-level metrics for the LightningModule (synced across DDP ranks by torchmetrics)."""
    if multilabel:
        return MetricCollection(
            {
                "auroc": KnownMultilabelAUROC(num_labels=num_classes, average="macro", ignore_index=IGNORE),
                "f1": MultilabelF1Score(num_labels=num_classes, average="macro", ignore_index=IGNORE),
            }
        )
    kw = {"num_classes": num_classes}
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(average="micro", **kw),
            "precision": MulticlassPrecision(average="macro", **kw),
            "recall": MulticlassRecall(average="macro", **kw),
            "f1": MulticlassF1Score(average="macro", **kw),
            "auroc": MulticlassAUROC(average="macro", **kw),
        }
    )


def mask_targets(targets: torch.Tensor) -> torch.Tensor:
    """Multi-label float targets with NaN -> int targets with `IGNORE` for unknowns."""
    return torch.where(torch.isnan(targets), torch.full_like(targets, IGNORE), targets).long()


def _safe(fn, *args, **kwargs) -> list[float] | float:
    value = fn(*args, **kwargs)
    return value.tolist() if value.ndim else float(value)


def compute_metrics(probs: np.ndarray, targets: np.ndarray, labels: list[str], multilabel: bool) -> dict:
    """All headline metrics from predicted probabilities.

    Args:
        probs: (N, C) probabilities (softmax for single-label, sigmoid for multi-label).
        targets: (N,) class indices, or (N, C) floats with NaN for unknown.
        labels: class names in output order.
        multilabel: which of the two target layouts is given.

    Returns:
        A JSON-serialisable dict: headline numbers, ``per_class`` tables and (single-label) the
        confusion matrix (rows: true class, columns: predicted).
    """
    p = torch.tensor(np.asarray(probs), dtype=torch.float32)
    c = len(labels)
    if multilabel:
        t = mask_targets(torch.tensor(np.asarray(targets), dtype=torch.float32))
        valid = [(t[:, j] != IGNORE).any() and t[t[:, j] != IGNORE, j].unique().numel() == 2 for j in range(c)]
        # per finding over its known targets (torchmetrics fails on a finding no image annotates: data=multi)
        per_auroc = [
            float(binary_auroc(p[t[:, j] != IGNORE, j], t[t[:, j] != IGNORE, j])) if ok else float("nan")
            for j, ok in enumerate(valid)
        ]
        per_f1 = multilabel_f1_score(p, t, num_labels=c, average="none", ignore_index=IGNORE).tolist()
        return {
            "n": int(len(p)),
            "auroc_macro": float(np.nanmean(per_auroc)) if any(valid) else float("nan"),
            "f1_macro": macro(per_f1, (t == 1).any(0)),
            "per_class": {
                lab: {"auroc": a, "f1": f, "positives": int((t[:, j] == 1).sum())}
                for j, (lab, a, f) in enumerate(zip(labels, per_auroc, per_f1, strict=True))
            },
        }
    t = torch.tensor(np.asarray(targets), dtype=torch.long)  # a copy: read-only arrays (pandas) are fine
    kw = {"num_classes": c}
    counts = torch.bincount(t, minlength=c)
    present = counts > 0
    defined = present & (counts < len(t))  # AUROC needs positives and negatives
    per_auroc = multiclass_auroc(p, t, average="none", **kw).tolist() if len(t) else [float("nan")] * c
    per_auroc = [a if ok else float("nan") for a, ok in zip(per_auroc, defined.tolist(), strict=True)]
    per = {
        "precision": multiclass_precision(p, t, average="none", **kw).tolist(),
        "recall": multiclass_recall(p, t, average="none", **kw).tolist(),
        "f1": multiclass_f1_score(p, t, average="none", **kw).tolist(),
    }
    cm = multiclass_confusion_matrix(p, t, **kw)
    negatives = cm.sum() - cm.sum(0) - cm.sum(1) + cm.diag()
    specificity = (negatives / (cm.sum() - cm.sum(1)).clamp(min=1)).tolist()
    return {
        "n": int(len(p)),
        "accuracy": _safe(multiclass_accuracy, p, t, average="micro", **kw),
        "precision_macro": macro(per["precision"], present),
        "recall_macro": macro(per["recall"], present),
        "f1_macro": macro(per["f1"], present),
        "auroc_macro": float(np.nanmean(per_auroc)) if any(defined) else float("nan"),
        "per_class": {
            lab: {
                "precision": per["precision"][j],
                "recall": per["recall"][j],
                "sensitivity": per["recall"][j],
                "specificity": specificity[j],
                "f1": per["f1"][j],
                "auroc": per_auroc[j],
                "support": int(cm[j].sum()),
            }
            for j, lab in enumerate(labels)
        },
        "confusion_matrix": cm.tolist(),
    }
