"""lungnet.scoring.outputs.model_outputs: from the prepared store the loader yields bytes, the model the same
numbers (`lungnet.data.dataset.bytes_out`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, Subset

from lungnet.data.cache import PreparedReader
from lungnet.data.dataset import SeededPipeline, XrayDataset, bytes_out
from lungnet.data.transforms import Normalize, build_transform
from lungnet.models.registry import create_model
from lungnet.scoring.outputs import model_outputs

SIDE = 32
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def store_dataset(tmp_path, n: int = 10, steps=None, side: int = SIDE) -> XrayDataset:
    """``n`` random uint8 images in a prepared store, behind the evaluation pipeline of a 3-channel model."""
    pixels = np.random.default_rng(0).integers(0, 256, (n, SIDE, SIDE), dtype=np.uint8)
    np.save(tmp_path / "store.npy", pixels)
    paths = [f"/data/{i}.png" for i in range(n)]
    reader = PreparedReader(tmp_path / "store.npy", {p: i for i, p in enumerate(paths)})
    table = pd.DataFrame({"path": paths, "target": np.arange(n) % 2})
    pipeline = SeededPipeline(build_transform(side, steps, sized=side == SIDE), Normalize(MEAN, STD, 3))
    return XrayDataset(table, ["a", "b"], False, pipeline, reader=reader)


def test_store_images_come_as_bytes_and_normalise_per_batch_to_the_same_numbers(tmp_path):
    ds = store_dataset(tmp_path)
    floats = torch.stack([ds[i]["image"] for i in range(4)])
    with bytes_out(Subset(ds, range(4))) as normalize:
        raw = torch.stack([ds[i]["image"] for i in range(4)])
        assert raw.dtype == torch.uint8 and raw.shape == (4, 1, SIDE, SIDE)
        assert torch.equal(normalize.batch(raw), floats)
    assert torch.equal(ds[0]["image"], floats[0])  # the pipeline is back


def test_augmented_or_decoded_data_sets_are_left_as_they_are(tmp_path):
    import albumentations as A

    augmented = store_dataset(tmp_path, steps=[A.HorizontalFlip(p=1.0)])
    with bytes_out(augmented) as normalize:
        assert normalize is None and augmented[0]["image"].dtype == torch.float32
    decoded = store_dataset(tmp_path)
    decoded.reader = lambda path: np.zeros((SIDE, SIDE), np.uint8)  # not the store: files may decode to float
    with bytes_out(decoded) as normalize:
        assert normalize is None
    with bytes_out(None) as normalize:  # a plain list of batches
        assert normalize is None


@pytest.mark.parametrize("workers", [0, 2])
def test_model_outputs_from_bytes_equal_those_from_normalised_images(tmp_path, workers, monkeypatch):
    torch.manual_seed(0)
    model = create_model("simple_cnn", 2, in_chans=3)
    ds = store_dataset(tmp_path)
    batches, per_batch = [], Normalize.batch

    def counted(self, x, out=None):
        batches.append(x.dtype)
        return per_batch(self, x, out)

    monkeypatch.setattr(Normalize, "batch", counted)
    inputs = []  # where each batch the model saw was stored
    model.backbone.register_forward_pre_hook(lambda module, args: inputs.append(args[0].data_ptr()))
    got = model_outputs(model, DataLoader(ds, batch_size=4, num_workers=workers), False, features=True)
    assert batches == [torch.uint8] * 3  # 10 images in batches of 4, each normalised in this process
    assert inputs[0] == inputs[1] != inputs[2]  # the two full batches in one tensor; the last (2 images) in its own
    images = torch.stack([ds[i]["image"] for i in range(len(ds))])
    with torch.no_grad():
        pooled = model.eval().backbone(images)
        logits = model.head(pooled).numpy()
    np.testing.assert_array_equal(got.logits, logits)
    np.testing.assert_array_equal(got.features[:, : pooled.shape[1]], pooled.numpy())
    assert ds.pipeline.normalize is not None  # restored after the loop


def test_a_copy_yields_bytes_for_a_loader_that_outlives_a_with_block(tmp_path):
    from lungnet.data.dataset import as_bytes

    ds = store_dataset(tmp_path)
    copy, normalize = as_bytes(ds)
    assert copy is not ds and copy[0]["image"].dtype == torch.uint8
    assert torch.equal(normalize.batch(copy[0]["image"][None])[0], ds[0]["image"])  # the original is unchanged
    augmented = store_dataset(tmp_path, steps=[__import__("albumentations").HorizontalFlip(p=1.0)])
    assert as_bytes(augmented) == (augmented, None)
