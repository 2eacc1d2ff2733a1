"""lungnet.scoring.scatter: the gate's statistics merged from shards equal those of all rows at once."""

from __future__ import annotations

import numpy as np
import pytest

from lungnet.scoring.ood import THUMB, ImageGate, OodGate, gate_scatters
from lungnet.scoring.scatter import Scatter


def shards(n: int, cuts: list[int]) -> list[slice]:
    """Contiguous slices of ``range(n)`` at ``cuts`` (an empty one where two cuts meet)."""
    edges = [0, *cuts, n]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def test_merged_shards_equal_the_whole_including_a_class_missing_from_a_shard_and_an_empty_shard():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(600, 12)) @ rng.normal(size=(12, 12)) + 5.0).astype(np.float32)
    y = np.where(np.arange(600) < 100, 0, rng.integers(1, 4, 600))  # class 0 only in the first shard
    whole = Scatter.of(x, y)
    parts = [Scatter.of(x[s], y[s]) for s in shards(600, [150, 150, 420])]  # the second shard is empty
    merged = Scatter.merged(parts)
    np.testing.assert_array_equal(merged.classes, whole.classes)
    np.testing.assert_array_equal(merged.counts, whole.counts)
    np.testing.assert_allclose(merged.means, whole.means, rtol=1e-12)
    np.testing.assert_allclose(merged.scatter, whole.scatter, rtol=1e-4, atol=1e-4 * np.abs(whole.scatter).max())


def test_each_part_is_centred_on_its_own_means_so_small_variances_survive_a_large_offset():
    rng = np.random.default_rng(1)
    x = 1000.0 + 0.01 * rng.normal(size=(4000, 6))  # float32 sums of squares about zero would lose these variances
    truth = (x - x.mean(0)).T @ (x - x.mean(0))
    merged = Scatter.merged([Scatter.of(x[s]) for s in shards(4000, [1000, 2500, 3100])])
    np.testing.assert_allclose(np.diag(merged.scatter), np.diag(truth), rtol=1e-2)


def test_a_gate_fitted_from_merged_shards_scores_like_one_fitted_on_all_rows():
    rng = np.random.default_rng(2)
    inputs = rng.normal(size=(900, 40 + THUMB * THUMB)).astype(np.float32)
    inputs[:, :40] = rng.normal(size=(900, 5)) @ rng.normal(size=(5, 40)) + 0.1 * rng.normal(size=(900, 40))
    y = rng.integers(0, 3, 900)
    whole = ImageGate.fit(inputs, y, dims=8).calibrate(inputs[:300])
    pieces = [gate_scatters(inputs[s], y[s]) for s in shards(900, [200, 610])]
    features, image = (Scatter.merged([p[i] for p in pieces]) for i in range(2))
    merged = ImageGate.from_scatters(features, image, dims=8).calibrate(inputs[:300])
    test = rng.normal(size=(50, inputs.shape[1])).astype(np.float32)
    np.testing.assert_allclose(merged.score(test), whole.score(test), rtol=1e-3)
    assert merged.features.info["fit_n"] == whole.features.info["fit_n"] == 900


def test_a_gate_needs_three_rows_and_merging_needs_rows_of_one_width():
    rng = np.random.default_rng(3)
    with pytest.raises(ValueError, match="at least 3 training images"):
        OodGate.from_scatter(Scatter.of(rng.normal(size=(2, 4))))
    with pytest.raises(ValueError, match="no rows"):
        Scatter.merged([Scatter.of(np.zeros((0, 4)))])
    with pytest.raises(ValueError, match="different widths"):
        Scatter.merged([Scatter.of(rng.normal(size=(5, 4))), Scatter.of(rng.normal(size=(5, 3)))])
