"""A torch Dataset over a source table: returns ``{"image", "target", "path", "index"}``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from lungnet.data.images import read_image


class XrayDataset(Dataset):
    """Images and targets of one split.

    Args:
        table: rows of the source table (``path`` and ``target`` or one column per label).
        labels: the ordered label list.
        multilabel: targets are float vectors (NaN = unknown) rather than class indices.
        pipeline: image (H, W) float in [0, 1] -> tensor (C, H, W).
        reader: image reader (the default decodes the file; the cache swaps in its own).
    """

    def __init__(
        self,
        table: pd.DataFrame,
        labels: list[str],
        multilabel: bool,
        pipeline: Callable[[np.ndarray], torch.Tensor],
        reader: Callable[[str], np.ndarray] = read_image,
    ) -> None:
        self.table = table.reset_index(drop=True)
        self.paths = self.table["path"].tolist()
        self.labels = labels
        self.multilabel = multilabel
        if multilabel:
            self.targets = torch.tensor(self.table[labels].to_numpy(np.float32))
        else:
            self.targets = torch.tensor(self.table["target"].to_numpy(np.int64))
        self.pipeline = pipeline
        self.reader = reader

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        image = self.pipeline(self.reader(self.paths[index]))
        return {"image": image, "target": self.targets[index], "path": self.paths[index], "index": index}

    def class_counts(self) -> np.ndarray:
        """Images per class (single-label) or positives per label (multi-label, NaN ignored)."""
        if self.multilabel:
            return np.nansum(self.targets.numpy(), axis=0)
        return np.bincount(self.targets.numpy(), minlength=len(self.labels))
