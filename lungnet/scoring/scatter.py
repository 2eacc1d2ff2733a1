"""The sufficient statistics of the OOD gate's fit: class counts, class means and the within-class scatter.

`lungnet.scoring.ood.OodGate` is fitted from these alone, so the training images' features need not sit in one
process. The statistics are built in two steps that both add up across shares of the rows: `class_sums` (each
class's row count and the sum of its rows, float64) and, once the sums of all shares give the class means,
`squares_about` those means (float32, numpy's ``syrk``). After a multi-process training each rank computes both on
its own share and the ranks' arrays are summed (`lungnet.evaluation.sharded`): rank 0 receives one D x D array
however many ranks there are, and the result equals a single process's `Scatter.of` to float32 rounding. Centring on
the class means before squaring (not a sum of squares about zero, which loses small variances to cancellation in
float32) is what makes the second step necessary.

Given a CUDA device (`accelerator`), the squares and the gate's leading axes (`leading_axes`) are computed there in
float64 rather than on the host's cores: after a GPU training they are most of the gate fit's CPU time.

Growth: O(N D^2) for the squares, O(N D) for the sums, O(D^3) for the axes; memory O(D^2) beyond the rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.linalg

if TYPE_CHECKING:
    import torch

DEVICE_ROWS = 8192  # rows squared at once on a device: 134 MB of float64 at 2048 features (twice that in flight)


@dataclass(frozen=True, eq=False)
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
    def of(cls, features: np.ndarray, classes: np.ndarray | None = None, device: torch.device | None = None) -> Scatter:
        """The statistics of all of ``features`` in one process.

        Args:
            features: (N, D) rows.
            classes: (N,) class index per row, or None for one common mean (multi-label).
            device: where the squares are computed (`squares_about`: a CUDA device, or the CPU's torch); None: numpy
                on the host.
        """
        n_classes = 1 if classes is None or not len(classes) else int(np.max(classes)) + 1
        sums = class_sums(features, classes, n_classes)
        return cls.from_sums(sums, squares_about(features, classes, sums, device))

    @classmethod
    def from_sums(cls, sums: np.ndarray, squares: np.ndarray) -> Scatter:
        """The statistics from the `class_sums` of all rows and the `squares_about` their means.

        Args:
            sums: (K, 1 + D) per class index the row count, then the sum of the rows (classes without rows dropped).
            squares: (D, D) the rows' sum of squares about their class means.
        """
        present = np.flatnonzero(sums[:, 0] > 0)
        counts = sums[present, 0]
        return cls(present, counts.astype(np.int64), sums[present, 1:] / counts[:, None], np.asarray(squares))


def _groups(n: int, classes: np.ndarray | None) -> np.ndarray:
    return np.zeros(n, dtype=np.int64) if classes is None else np.asarray(classes, dtype=np.int64)


def class_sums(features: np.ndarray, classes: np.ndarray | None, n_classes: int) -> np.ndarray:
    """Per class index the row count and the sum of the rows (float64): sums of shares add up to the whole's.

    Args:
        features: (N, D) rows (N may be 0).
        classes: (N,) class index per row, or None (every row in class 0).
        n_classes: K, the class indices counted (0 .. K - 1).

    Returns:
        (K, 1 + D) float64.
    """
    x = np.asarray(features, dtype=np.float32)
    groups = _groups(len(x), classes)
    out = np.zeros((n_classes, 1 + x.shape[1]))
    out[:, 0] = np.bincount(groups, minlength=n_classes)[:n_classes]
    if n_classes == 1:  # multi-label: no (N, D) copy for a class mask
        out[0, 1:] = x.sum(0, dtype=np.float64)
    else:
        for g in np.flatnonzero(out[:, 0]):
            out[g, 1:] = x[groups == g].sum(0, dtype=np.float64)
    return out


def accelerator(device: str | torch.device | None) -> torch.device | None:
    """``device`` when it is a CUDA device, where `squares_about` and `leading_axes` run in float64; None otherwise
    (the host; MPS has no float64). The callers pass what this returns, never a model's device as it is."""
    if device is None:
        return None
    import torch

    device = torch.device(device)
    return device if device.type == "cuda" else None


def squares_about(
    features: np.ndarray, classes: np.ndarray | None, sums: np.ndarray, device: torch.device | None = None
) -> np.ndarray:
    """The rows' sum of squares about the class means of ``sums`` (the `class_sums` of all rows, of every share):
    (D, D) float32; the shares' add up to the whole's.

    Args:
        features: (N, D) this share's rows (N may be 0).
        classes: (N,) their class indices, or None (one common mean: multi-label).
        sums: (K, 1 + D) the `class_sums` of all rows, of every share.
        device: a CUDA device (`accelerator`; or the CPU's torch) to compute on in float64 (a GPU's float32 products
            may round to TF32's 10 bits); None: numpy float32 on the host.
    """
    if device is not None:
        return squares_on(features, classes, sums, device).float().cpu().numpy()
    x = np.asarray(features, dtype=np.float32)
    means = _means(sums).astype(np.float32)
    centred = x - means[0] if len(means) == 1 else x - means[_groups(len(x), classes)]
    return centred.T @ centred


def _means(sums: np.ndarray) -> np.ndarray:
    """The class means (K, D) of `class_sums` (K, 1 + D); a class without rows has mean 0."""
    return sums[:, 1:] / np.maximum(sums[:, 0], 1.0)[:, None]


def squares_on(features: np.ndarray, classes: np.ndarray | None, sums: np.ndarray, device) -> torch.Tensor:
    """`squares_about` computed on ``device`` and left there: a (D, D) float64 tensor (for a collective that sums
    the ranks' shares on the device, `lungnet.evaluation.sharded`).

    ``DEVICE_ROWS`` rows at a time (device memory O(DEVICE_ROWS D + D^2)); each chunk travels as float32 and is
    widened on the device: the host only copies it.
    """
    import torch

    x = np.asarray(features, dtype=np.float32)
    groups = _groups(len(x), classes)
    means = _means(sums)
    at = torch.from_numpy(means).to(device)
    out = torch.zeros((x.shape[1], x.shape[1]), dtype=torch.float64, device=device)
    for start in range(0, len(x), DEVICE_ROWS):
        rows = torch.from_numpy(x[start : start + DEVICE_ROWS]).to(device).double()
        rows -= at[0] if len(means) == 1 else at[torch.from_numpy(groups[start : start + DEVICE_ROWS]).to(device)]
        out.addmm_(rows.T, rows)
    return out


def leading_axes(scatter: np.ndarray, k: int, device: torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest eigenvalues of a symmetric ``scatter`` (clipped at 0), largest first, and their unit
    eigenvectors as columns.

    On the host only those are computed (LAPACK ``syevx``), several times faster than every axis at the 2048 features
    of a ResNet; on ``device`` (a CUDA device, `accelerator`; or the CPU's torch) every axis in float64, then the
    leading ``k`` (an eigenvector's sign is arbitrary either way).
    """
    if device is not None:
        import torch

        values, vectors = torch.linalg.eigh(torch.from_numpy(np.asarray(scatter)).to(device, torch.float64))
        eigval, eigvec = values[-k:].flip(0).cpu().numpy(), vectors[:, -k:].flip(1).cpu().numpy()
        return np.clip(eigval, 0.0, None), eigvec
    width = len(scatter)
    eigval, eigvec = scipy.linalg.eigh(scatter, subset_by_index=[width - k, width - 1], driver="evx")
    return np.clip(eigval[::-1], 0.0, None), eigvec[:, ::-1]
