"""The headline statistics of many bootstrap resamples at once, from multiplicity weights.

A resample with index draws ``idx`` is the data with weights ``np.bincount(idx, minlength=n)`` (how often each image
was drawn), and every statistic of `lungnet.scoring.stats.headline` is a weighted one:

- per-class AUROC (Mann-Whitney U, ties counted one half): each class's scores are sorted once; per resample the
  smaller of the two sides (positives or negatives) is summed per distinct score and the other side per bucket
  between those scores, so that U is a short dot product of running sums. One sparse (buckets x images) matrix per
  class gives these sums for a whole chunk of resamples in one product;
- counts of true positives, false positives and false negatives, the summed loss and (single-label) the correct
  decisions: one product of the weights with an (images x columns) design matrix.

The resamples are scored in chunks whose (images x resamples) matrices stay near `CHUNK_BYTES`, so that scoring
112,000 images does not need gigabytes. The numbers equal scoring each resample's images one by one (to floating
error), for the same draws.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from lungnet.data.labels import DEFAULT_THRESHOLD
from lungnet.scoring.resample import Resampler

EPS = 1e-7
CHUNK_BYTES = 64 * 2**20  # largest (images x resamples) float64 matrix of one chunk


def _auroc_plan(score: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> tuple[sparse.csr_array, int] | None:
    """The (buckets x images) sums behind one class's weighted U statistic; None when a side is empty.

    Rows ``[0, m)`` sum the inner side (the one with fewer distinct scores) per distinct score ``v_g``; rows
    ``m + k`` (``k`` in ``[0, m]``) sum the outer side whose score lies above exactly ``k`` of them; rows
    ``2m + 1 + g`` sum the outer side tied with ``v_g``. U = sum over outer of weight times (inner weight below +
    half the tied), so with positives as the inner side the scores are negated.
    """
    if not pos.any() or not neg.any():
        return None
    if len(np.unique(score[pos])) <= len(np.unique(score[neg])):
        inner, outer, score = np.flatnonzero(pos), np.flatnonzero(neg), -score
    else:
        inner, outer = np.flatnonzero(neg), np.flatnonzero(pos)
    values, group = np.unique(score[inner], return_inverse=True)
    m, outer_score = len(values), score[outer]
    below = np.searchsorted(values, outer_score, side="left")
    tied = below < m
    tied[tied] = values[below[tied]] == outer_score[tied]
    rows = np.concatenate([group.ravel(), m + below, 2 * m + 1 + below[tied]])
    cols = np.concatenate([inner, outer, outer[tied]])
    matrix = sparse.csr_array((np.ones(len(rows)), (rows, cols)), shape=(3 * m + 1, len(score)))
    return matrix, m


def _weighted_auroc(plan: tuple[sparse.csr_array, int] | None, wt: np.ndarray) -> np.ndarray:
    """One class's AUROC for each column of the (images x resamples) weights ``wt``; NaN without both classes."""
    if plan is None:
        return np.full(wt.shape[1], np.nan)
    matrix, m = plan
    sums = matrix @ wt
    inner, outer, tied = sums[:m], sums[m : 2 * m + 1], sums[2 * m + 1 :]
    below = np.zeros_like(outer)  # inner weight under each outer bucket
    np.cumsum(inner, axis=0, out=below[1:])
    u = np.einsum("kr,kr->r", outer, below) + 0.5 * np.einsum("gr,gr->r", tied, inner)
    both = below[-1] * outer.sum(0)
    return np.divide(u, both, out=np.full_like(u, np.nan), where=both > 0)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _macro(values: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Per resample: the mean over the classes present in it (NaN when none), as `lungnet.scoring.metrics.macro`."""
    count = present.sum(1)
    total = np.where(present, values, 0.0).sum(1)
    return np.divide(total, count, out=np.full(len(count), np.nan), where=count > 0)


class WeightedScorer:
    """Headline statistics of one model's predictions under many weightings of the images.

    Args:
        probs: (N, C) probabilities.
        targets: (N,) class indices or (N, C) multi-label targets (NaN: unknown).
        multilabel: target layout.
    """

    def __init__(self, probs: np.ndarray, targets: np.ndarray, multilabel: bool) -> None:
        probs = np.asarray(probs, dtype=np.float64)
        self.n, c = probs.shape
        self.classes, self.multilabel = c, multilabel
        if multilabel:
            truth = np.asarray(targets, dtype=np.float64)
            pred = probs >= DEFAULT_THRESHOLD
        else:
            truth = np.eye(c)[np.asarray(targets, dtype=np.int64)]
            pred = np.eye(c, dtype=bool)[probs.argmax(1)]
        known = ~np.isnan(truth)
        pos, neg = (truth == 1) & known, (truth == 0) & known
        self.plans = [_auroc_plan(probs[:, j], known[:, j] & (truth[:, j] != 0), neg[:, j]) for j in range(c)]
        p = np.clip(probs, EPS, 1 - EPS)
        if multilabel:
            t = np.where(known, truth, 0.0)
            loss = np.where(known, -(t * np.log(p) + (1 - t) * np.log(1 - p)), 0.0).sum(1)
            extra = [loss, known.sum(1), np.zeros(self.n)]
        else:
            idx = np.asarray(targets, dtype=np.int64)
            extra = [-np.log(p[np.arange(self.n), idx]), np.ones(self.n), (probs.argmax(1) == idx).astype(float)]
        # columns: TP (C), FP (C), FN (C), summed loss, loss count, correct decisions
        self.design = np.column_stack([pred & pos, pred & neg, ~pred & pos, *extra]).astype(np.float64)

    def rows(self) -> int:
        """The most rows of one (rows x resamples) matrix this scorer builds (sizes the chunks)."""
        return max([self.n, *(plan[0].shape[0] for plan in self.plans if plan is not None)])

    def score(self, wt: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Headline statistics of each weighting.

        Args:
            wt: (N, R) weights, one column per resample (how often each image was drawn).

        Returns:
            ``({metric: (R,) values}, (R, C) per-class AUROC)`` with the keys of `lungnet.scoring.stats.headline`.
        """
        c = self.classes
        auroc = np.stack([_weighted_auroc(plan, wt) for plan in self.plans], axis=1)
        sums = wt.T @ self.design
        tp, fp, fn = sums[:, :c], sums[:, c : 2 * c], sums[:, 2 * c : 3 * c]
        present = (tp + fn) > 0
        finite = np.isfinite(auroc)
        count = finite.sum(1)
        out = {
            "precision_macro": _macro(_ratio(tp, tp + fp), present),
            "recall_macro": _macro(_ratio(tp, tp + fn), present),
            "f1_macro": _macro(_ratio(2 * tp, 2 * tp + fp + fn), present),
            "auroc_macro": np.divide(
                np.where(finite, auroc, 0.0).sum(1), count, out=np.full(len(count), np.nan), where=count > 0
            ),
            "loss": np.divide(sums[:, -3], sums[:, -2], out=np.full(len(sums), np.nan), where=sums[:, -2] > 0),
        }
        if not self.multilabel:
            total = wt.sum(0)
            accuracy = np.divide(sums[:, -1], total, out=np.full(len(total), np.nan), where=total > 0)
            out = {"accuracy": accuracy, **out}
        return out, auroc


def weight_chunks(resampler: Resampler, rng: np.random.Generator, resamples: int, chunk: int):
    """Yield (N, r) multiplicity weights of ``resamples`` draws, ``chunk`` resamples at a time, in draw order.

    The draws are ``resampler.draw(rng)`` called ``resamples`` times, as a loop over resamples would make them.
    """
    n, done = resampler.n, 0
    while done < resamples:
        r = min(chunk, resamples - done)
        counts = np.empty((r, n))
        for k in range(r):
            counts[k] = np.bincount(resampler.draw(rng), minlength=n)
        wt = np.ascontiguousarray(counts.T)  # images in rows: the sparse products read whole rows
        del counts
        yield wt
        done += r


def resampled_headlines(
    models: list[np.ndarray],
    targets: np.ndarray,
    multilabel: bool,
    resamples: int,
    rng: np.random.Generator,
    groups: np.ndarray | None = None,
    chunk_bytes: int | None = None,
) -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Headline statistics of each model's predictions on the same bootstrap resamples.

    Args:
        models: (N, C) probabilities per model, all for the same images.
        targets: (N,) class indices or (N, C) multi-label targets (NaN: unknown).
        multilabel: target layout.
        resamples: number of resamples.
        rng: the generator the draws come from (`Resampler.draw`, once per resample).
        groups: (N,) patient per image (whole patients resampled); None resamples images.
        chunk_bytes: the size of one chunk's (images x resamples) matrices; `CHUNK_BYTES` when None.

    Returns:
        Per model ``({metric: (resamples,) values}, (resamples, C) per-class AUROC)``, in draw order.
    """
    resampler = Resampler(len(targets), groups)
    scorers = [WeightedScorer(probs, targets, multilabel) for probs in models]
    budget = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    chunk = max(1, int(budget // (8 * max([1, *(s.rows() for s in scorers)]))))
    parts: list[list[tuple[dict[str, np.ndarray], np.ndarray]]] = [[] for _ in scorers]
    for wt in weight_chunks(resampler, rng, int(resamples), chunk) if resampler.n else ():
        for part, scorer in zip(parts, scorers, strict=True):
            part.append(scorer.score(wt))
    out = []
    for part, scorer in zip(parts, scorers, strict=True):
        part = part or [scorer.score(np.zeros((scorer.n, 0)))]
        values = {key: np.concatenate([p[0][key] for p in part]) for key in part[0][0]}
        out.append((values, np.concatenate([p[1] for p in part])))
    return out
