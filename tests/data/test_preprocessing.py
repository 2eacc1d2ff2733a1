"""`lungnet.data.preprocessing.logits_to_probs`: the one logits -> probabilities for tensors and arrays alike."""

from __future__ import annotations

import numpy as np
import torch

from lungnet.artifacts.checkpoint import LoadedModel
from lungnet.data.preprocessing import logits_to_probs
from lungnet.models.registry import create_model
from lungnet.scoring.outputs import predict_loader


def test_tensors_and_arrays_give_the_same_probabilities():
    logits = np.array([[2.0, -1.0, 0.5], [1000.0, 0.0, -1000.0]])  # large logits: no overflow
    probs = logits_to_probs(logits, multilabel=False)
    assert probs.dtype == np.float64 and np.allclose(probs.sum(1), 1.0)
    assert np.allclose(probs[0], np.exp(logits[0]) / np.exp(logits[0]).sum()) and probs[1, 0] == 1.0
    tensor = logits_to_probs(torch.tensor(logits, dtype=torch.float32, requires_grad=True), multilabel=False)
    assert isinstance(tensor, torch.Tensor) and tensor.requires_grad and tensor.dtype == torch.float32
    np.testing.assert_allclose(tensor.detach().numpy(), probs, atol=1e-6)
    sig = logits_to_probs(logits, multilabel=True)
    np.testing.assert_allclose(sig, 1 / (1 + np.exp(-np.clip(logits, -50, 50))), atol=1e-12)
    assert logits_to_probs([[0.0, 0.0]], multilabel=True).tolist() == [[0.5, 0.5]]  # lists too


def test_every_model_path_uses_it(tmp_path):
    torch.manual_seed(0)
    model = create_model("simple_cnn", 3, in_chans=1, image_size=32).eval()
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        logits = model(x)
    for multilabel in (False, True):
        expected = logits_to_probs(logits, multilabel)
        loaded = LoadedModel(model, model.spec, ["a", "b", "c"], multilabel, {}, {}, tmp_path / "m.ckpt")
        torch.testing.assert_close(loaded.probabilities(logits), expected)
        batch = [{"image": x, "target": torch.zeros(4), "path": [str(i) for i in range(4)]}]
        probs, _, _ = predict_loader(model, batch, multilabel)
        np.testing.assert_allclose(probs, expected.numpy(), atol=1e-6)
