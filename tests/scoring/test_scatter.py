"""lungnet.scoring.scatter: the gate's statistics summed over shares of the rows equal those of all rows at once."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from lungnet.scoring import scatter as scatter_module
from lungnet.scoring.gate_inputs import THUMB, gate_scatters, split_inputs
from lungnet.scoring.ood import ImageGate, OodGate
from lungnet.scoring.scatter import Scatter, accelerator, class_sums, leading_axes, squares_about, squares_on
from tests.conftest import ROOT


def shards(n: int, cuts: list[int]) -> list[slice]:
    """Contiguous slices of ``range(n)`` at ``cuts`` (an empty one where two cuts meet)."""
    edges = [0, *cuts, n]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def summed(x: np.ndarray, y: np.ndarray | None, n_classes: int, parts: list[slice]) -> Scatter:
    """What the ranks compute: each share's class sums, added; each share's squares about those means, added."""
    classes = (lambda s: None) if y is None else (lambda s: y[s])  # noqa: E731
    sums = np.sum([class_sums(x[s], classes(s), n_classes) for s in parts], axis=0)
    squares = np.sum([squares_about(x[s], classes(s), sums) for s in parts], axis=0)
    return Scatter.from_sums(sums, squares)


def test_shares_add_up_to_the_whole_including_a_class_missing_from_a_share_and_an_empty_share():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(600, 12)) @ rng.normal(size=(12, 12)) + 5.0).astype(np.float32)
    y = np.where(np.arange(600) < 100, 0, rng.integers(2, 5, 600))  # class 0 only in the first share, no class 1
    whole = Scatter.of(x, y)
    got = summed(x, y, 6, shards(600, [150, 150, 420]))  # the second share is empty; classes 1 and 5 have no rows
    np.testing.assert_array_equal(got.classes, [0, 2, 3, 4])
    np.testing.assert_array_equal(got.classes, whole.classes)
    np.testing.assert_array_equal(got.counts, whole.counts)
    np.testing.assert_allclose(got.means, whole.means, rtol=1e-12)
    np.testing.assert_allclose(got.scatter, whole.scatter, rtol=1e-5, atol=1e-5 * np.abs(whole.scatter).max())
    pooled = x - whole.means[np.searchsorted(whole.classes, y)]  # float64 reference
    np.testing.assert_allclose(whole.scatter, pooled.T @ pooled, rtol=1e-4, atol=1e-4 * np.abs(whole.scatter).max())


def test_squares_are_taken_about_the_means_so_small_variances_survive_a_large_offset():
    rng = np.random.default_rng(1)
    x = 1000.0 + 0.01 * rng.normal(size=(4000, 6))  # float32 sums of squares about zero would lose these variances
    truth = (x - x.mean(0)).T @ (x - x.mean(0))
    got = summed(x, None, 1, shards(4000, [1000, 2500, 3100]))
    np.testing.assert_allclose(np.diag(got.scatter), np.diag(truth), rtol=1e-2)


def test_a_gate_fitted_from_summed_shares_scores_like_one_fitted_on_all_rows():
    rng = np.random.default_rng(2)
    inputs = rng.normal(size=(900, 40 + THUMB * THUMB)).astype(np.float32)
    inputs[:, :40] = rng.normal(size=(900, 5)) @ rng.normal(size=(5, 40)) + 0.1 * rng.normal(size=(900, 40))
    y = rng.integers(0, 3, 900)
    whole = ImageGate.fit(inputs, y, dims=8).calibrate(inputs[:300])
    features, thumbnails = split_inputs(inputs)
    parts = shards(900, [200, 610])
    ranks = ImageGate.from_scatters(summed(features, y, 3, parts), summed(thumbnails, y, 3, parts), dims=8)
    ranks = ranks.calibrate(inputs[:300])
    test = rng.normal(size=(50, inputs.shape[1])).astype(np.float32)
    np.testing.assert_allclose(ranks.score(test), whole.score(test), rtol=1e-3)
    assert ranks.features.info["fit_n"] == whole.features.info["fit_n"] == 900
    one = gate_scatters(inputs, y)[0]  # the one-process statistics are the same code on one share
    np.testing.assert_array_equal(one.scatter, Scatter.of(features, y).scatter)


def test_a_gate_needs_three_rows_and_gate_inputs_need_feature_columns():
    rng = np.random.default_rng(3)
    with pytest.raises(ValueError, match="at least 3 training images"):
        OodGate.from_scatter(Scatter.of(rng.normal(size=(2, 4))))
    with pytest.raises(ValueError, match="hold no features"):
        split_inputs(np.zeros((3, THUMB * THUMB)))


def test_on_a_torch_device_the_squares_axes_and_gate_match_the_hosts(monkeypatch):
    """What a CUDA device computes (float64 torch), run on the CPU device: the same statistics and gate scores."""
    monkeypatch.setattr(scatter_module, "DEVICE_ROWS", 128)  # 700 rows: five whole chunks and a part
    rng = np.random.default_rng(4)
    inputs = rng.normal(size=(700, 30 + THUMB * THUMB)).astype(np.float32)
    inputs[:, :30] = rng.normal(size=(700, 4)) @ rng.normal(size=(4, 30)) * 3 + 0.1 * rng.normal(size=(700, 30)) + 2
    y = rng.integers(0, 3, 700)
    device = torch.device("cpu")
    host, on_device = gate_scatters(inputs, y), gate_scatters(inputs, y, device)
    for a, b in zip(host, on_device, strict=True):
        np.testing.assert_allclose(b.scatter, a.scatter, rtol=1e-4, atol=1e-5 * np.abs(a.scatter).max())
        assert b.scatter.dtype == np.float32
    values, vectors = leading_axes(host[0].scatter, 4)
    got_values, got_vectors = leading_axes(host[0].scatter, 4, device)
    np.testing.assert_allclose(got_values, values, rtol=1e-4)
    # the same leading subspace (an eigenvector's sign is arbitrary)
    np.testing.assert_allclose(got_vectors @ got_vectors.T, vectors @ vectors.T, atol=1e-4)
    test = rng.normal(size=(40, inputs.shape[1])).astype(np.float32)
    gates = [
        ImageGate.from_scatters(*s, dims=4, device=d).calibrate(inputs[:200])
        for s, d in [(host, None), (on_device, device)]
    ]
    np.testing.assert_allclose(gates[1].score(test), gates[0].score(test), rtol=1e-3)


def test_only_a_cuda_device_is_an_accelerator_for_the_statistics():
    assert accelerator(None) is None and accelerator("cpu") is None and accelerator("mps") is None
    assert accelerator("cuda:1") == torch.device("cuda:1")
    assert accelerator(torch.device("cuda")) == torch.device("cuda")


def test_on_a_torch_device_one_common_mean_and_a_share_without_rows_match_the_host():
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(300, 10)) + 3.0).astype(np.float32)
    sums = class_sums(x, None, 1)
    host = squares_about(x, None, sums)
    np.testing.assert_allclose(squares_about(x, None, sums, torch.device("cpu")), host, rtol=1e-4, atol=1e-4)
    empty = squares_about(x[:0], None, sums, torch.device("cpu"))
    assert empty.shape == (10, 10) and empty.dtype == np.float32 and not empty.any()
    kept = squares_on(x, None, sums, torch.device("cpu"))  # what a rank sums on its device
    assert isinstance(kept, torch.Tensor) and kept.dtype == torch.float64
    np.testing.assert_allclose(kept.numpy(), host, rtol=1e-4, atol=1e-4)


def test_the_gate_modules_load_without_torch():
    """The statistics import torch only on the device path: reading a decision file's gate needs no torch."""
    code = "import sys, lungnet.scoring.ood, lungnet.artifacts.decision_file; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"
