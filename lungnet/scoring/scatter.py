"""The sufficient statistics of the OOD gate's fit: class counts, class means and the within-class scatter.

`lungnet.scoring.ood.OodGate` is fitted from these alone, so the training images' features need not sit in one
process: after a multi-process training each rank sums its own share of the gate's training sample
(`lungnet.evaluation.sharded`) and rank 0 merges the ranks' `Scatter`s with the pairwise update of Chan, Golub &
LeVeque (1979): the scatter of a union is the sum of the parts' scatters about their own class means plus each part's
count times the outer product of its mean's offset from the union's. Every part is centred on its own means first
(no sum of squares about zero, which loses the small variances to cancellation in float32), so a merged scatter
equals the one-piece scatter to float32 rounding.

Growth: `Scatter.of` is O(N D^2) (one symmetric product, numpy's ``syrk``), `Scatter.merged` O(P C D^2) for P parts
of C classes; memory O(D^2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg


@dataclass(frozen=True)
class Scatter:
    """Counts, means and sum of squares about the means, per class, of a set of feature rows.

    Attributes:
        classes: (C,) the class indices present, ascending (one class 0 for multi-label models).
        counts: (C,) rows per class.
        means: (C, D) float64 class means.
        scatter: (D, D) float32 sum over rows of ``(x - mean_class)(x - mean_class)^T`` (not divided).
    """

    classes: np.ndarray
    counts: np.ndarray
    means: np.ndarray
    scatter: np.ndarray

    @property
    def n(self) -> int:
        """The rows summed."""
        return int(self.counts.sum())

    @property
    def width(self) -> int:
        """The feature width D."""
        return int(self.scatter.shape[0])

    @classmethod
    def of(cls, features: np.ndarray, classes: np.ndarray | None = None) -> Scatter:
        """The statistics of ``features`` (N, D) (float32 products, float64 means).

        Args:
            features: the rows.
            classes: (N,) class index per row, or None for one common mean (multi-label).
        """
        x = np.asarray(features, dtype=np.float32)
        groups = np.zeros(len(x), dtype=int) if classes is None else np.asarray(classes, dtype=int)
        present, counts = np.unique(groups, return_counts=True)
        means = np.zeros((len(present), x.shape[1]))
        if len(present) == 1:  # multi-label: one mean, and no (N, D) copies for a class mask or the rows' means
            means[0] = x.mean(0, dtype=np.float64)
            centred = x - means[0].astype(np.float32)
        else:
            for i, g in enumerate(present):
                means[i] = x[groups == g].mean(0, dtype=np.float64)
            centred = x - means.astype(np.float32)[np.searchsorted(present, groups)]
        return cls(present, counts.astype(np.int64), means, centred.T @ centred)

    @classmethod
    def merged(cls, parts: list[Scatter]) -> Scatter:
        """One `Scatter` of the union of the parts' rows (parts with no rows add nothing).

        Raises:
            ValueError: no part has rows, or the parts' widths differ.
        """
        parts = [p for p in parts if p.n]
        if not parts:
            raise ValueError("no rows to merge")
        if len({p.width for p in parts}) > 1:
            raise ValueError(f"scatters of different widths: {sorted({p.width for p in parts})}")
        classes = np.unique(np.concatenate([p.classes for p in parts]))
        counts = np.zeros(len(classes), dtype=np.int64)
        sums = np.zeros((len(classes), parts[0].width))
        for p in parts:
            at = np.searchsorted(classes, p.classes)
            counts[at] += p.counts
            sums[at] += p.counts[:, None] * p.means
        means = sums / counts[:, None]
        offsets = [np.sqrt(p.counts)[:, None] * (p.means - means[np.searchsorted(classes, p.classes)]) for p in parts]
        between = np.concatenate(offsets)
        total = between.T @ between
        for p in parts:
            total += p.scatter
        return cls(classes, counts, means, total.astype(np.float32))


def leading_axes(scatter: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest eigenvalues of a symmetric ``scatter`` (clipped at 0), largest first, and their unit
    eigenvectors as columns: only those are computed (LAPACK ``syevx``), several times faster than every axis at the
    2048 features of a ResNet."""
    width = len(scatter)
    eigval, eigvec = scipy.linalg.eigh(scatter, subset_by_index=[width - k, width - 1], driver="evx")
    return np.clip(eigval[::-1], 0.0, None), eigvec[:, ::-1]
