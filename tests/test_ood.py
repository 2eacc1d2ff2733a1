"""lungnet.ood: the PPCA-Mahalanobis gate agrees with pytorch-ood's Mahalanobis and flags what is far."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lungnet.ood import OodGate, decode_array, encode_array


def test_equals_pytorch_ood_mahalanobis_when_one_direction_is_dropped():
    detector_cls = pytest.importorskip("pytorch_ood.detector").Mahalanobis
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 5))
    y = rng.integers(0, 3, 400)
    x[y == 1] += 2.0
    gate = OodGate.fit(x, y, dims=64)  # keeps 4 axes; the 5th direction's variance is the noise: the exact inverse
    ref = detector_cls(None).fit_features(torch.tensor(x, dtype=torch.float32), torch.tensor(y))
    test = rng.normal(size=(50, 5)) * 3
    theirs = ref.predict_features(torch.tensor(test, dtype=torch.float32)).numpy()
    # pytorch-ood: 0.5 * d' S^-1 d with S the unnormalised within-class scatter (+1e-6 I); here d' C^-1 d / D
    ours = gate.score(test) * 5 / (len(x) - 3) * 0.5
    np.testing.assert_allclose(ours, theirs, rtol=2e-3)


def test_flags_far_points_and_passes_exchangeable_ones():
    rng = np.random.default_rng(1)
    basis = rng.normal(size=(16, 64))
    draw = lambda n: rng.normal(size=(n, 16)) @ basis + 0.1 * rng.normal(size=(n, 64))  # noqa: E731
    gate = OodGate.fit(draw(1000), dims=16).calibrate(draw(500), quantile=0.95)
    _, flags = gate.flag(draw(2000))
    assert 0.02 < flags.mean() < 0.09  # about 5 % of exchangeable images, by construction
    off_subspace = draw(50) + rng.normal(size=(50, 64))  # same scale, but leaves the training subspace
    assert gate.flag(off_subspace)[1].all()


def test_arrays_round_trip_as_json():
    a = np.random.default_rng(2).normal(size=(3, 4))
    back = decode_array(json.loads(json.dumps(encode_array(a))))
    np.testing.assert_allclose(back, a, rtol=1e-6)
    with pytest.raises(ValueError, match="dtype"):
        decode_array({"dtype": "object", "shape": [1], "base64": ""})
