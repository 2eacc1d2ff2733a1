"""predict.py decodes in DataLoader workers: the same table as in one process, error rows from workers, one read
per file for both the SHA-1 (seen_in_training) and the decode."""

from __future__ import annotations

import builtins
import hashlib

import numpy as np
import pandas as pd
import pytest
import torch

from lungnet.data.images import ImageReadError, read_bytes, read_image
from lungnet.data.inputs import InputFiles, decode_workers
from lungnet.data.overlap import exact64
from lungnet.serve.inference import Predictor
from lungnet.serve.predict_batch import run_batch
from tests.conftest import compose_cfg, write_png
from tests.serve.test_inference import make_checkpoint


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Seven small PNGs and one corrupt file (it sorts among them)."""
    root = tmp_path_factory.mktemp("in")
    for k in range(7):
        write_png(root / f"img{k}.png", k, size=40)
    (root / "img3b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return root


def predict_table(ckpt, folder, out, workers: int) -> pd.DataFrame:
    cfg = compose_cfg("predict", [f"ckpt={ckpt}", f"input={folder}", "batch_size=3", f"num_workers={workers}"])
    return pd.read_csv(run_batch(cfg, out), keep_default_na=False)


def test_workers_give_the_same_table_with_the_error_row_and_copies_marked(folder, tmp_path):
    ckpt = make_checkpoint(tmp_path / "m" / "best.ckpt")
    state = torch.load(ckpt, weights_only=True)
    sha1 = hashlib.sha1((folder / "img5.png").read_bytes()).hexdigest()
    none = {"exact": torch.zeros(0, dtype=torch.int64), "dhash": torch.zeros((0, 32), dtype=torch.uint8)}
    exact = torch.from_numpy(exact64(pd.Series([sha1])).copy())
    state["image_hashes"] = {"version": 1, "train": none, "val": {**none, "exact": exact}}
    torch.save(state, ckpt)
    serial = predict_table(ckpt, folder, tmp_path / "w0", 0)
    workers = predict_table(ckpt, folder, tmp_path / "w2", 2)
    pd.testing.assert_frame_equal(serial, workers)
    names = workers["file"].map(lambda f: f.rsplit("/", 1)[-1]).tolist()
    assert names == sorted(names) and len(names) == 8
    bad = workers[workers["error"] != ""]
    assert bad["file"].str.endswith("img3b.png").tolist() == [True] and bad["predicted"].tolist() == [""]
    assert workers.loc[workers["seen_in_training"] != "", "file"].str.endswith("img5.png").tolist() == [True]
    assert set(workers["seen_in_training"]) == {"", "val"}


def test_each_file_is_opened_once_for_hash_and_decode(folder, monkeypatch, tmp_path):
    predictor = Predictor(make_checkpoint(tmp_path / "best.ckpt"), decision="none")
    files = sorted(folder.glob("*.png"))
    opened = []
    real_open = builtins.open

    def counting_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    preds = list(predictor.predict_iter(files, batch_size=4, num_workers=0))
    monkeypatch.undo()
    assert sorted(o for o in opened if o.startswith(str(folder))) == [str(f) for f in files]
    assert [p.sha1 for p in preds] == [hashlib.sha1(f.read_bytes()).hexdigest() for f in files]
    assert [p.ok for p in preds] == [f.name != "img3b.png" for f in files]


def test_decoding_from_bytes_equals_decoding_the_file(folder, tmp_path):
    path = folder / "img1.png"
    np.testing.assert_array_equal(read_image(path, data=read_bytes(path)), read_image(path))
    short = tmp_path / "short.png"
    short.write_bytes(path.read_bytes()[:-40])  # torn inside the pixel data: refused from bytes as from the file
    with pytest.raises(ImageReadError) as from_file:
        read_image(short)
    with pytest.raises(ImageReadError) as from_bytes:
        read_image(short, data=read_bytes(short))
    assert from_bytes.value.reason == from_file.value.reason
    (tmp_path / "empty.png").write_bytes(b"")
    for name, reason in (("empty.png", "empty file"), ("gone.png", "cannot read file"), (".", "Is a directory")):
        with pytest.raises(ImageReadError, match=reason):
            read_bytes(tmp_path / name)


def test_items_carry_errors_and_workers_follow_the_batches(folder):
    class Prep:
        def pipeline(self):
            return lambda image: torch.from_numpy(image)[None]

    items = InputFiles([folder / "img3b.png", folder / "img0.png"], Prep(), keep_image=True, image_max_side=16)
    bad, good = items[0], items[1]
    assert bad.error and bad.tensor is None and bad.sha1
    assert not good.error and good.tensor.shape == (1, 40, 40) and max(good.image.shape) == 16
    assert decode_workers(None, 1) == 0 and decode_workers(3, 2) == 2 and 1 <= decode_workers(None, 100) <= 4


def test_an_ensemble_in_workers_gives_the_serial_probabilities(folder, tmp_path):
    """Each member's own input (32 and 40 px) is made in the worker from one decode."""
    a = make_checkpoint(tmp_path / "a" / "a.ckpt", seed=0)
    b = make_checkpoint(tmp_path / "b" / "b.ckpt", seed=1, size=40)
    ensemble = Predictor([str(a), str(b)], decision="none")
    files = sorted(folder.glob("*.png"))
    serial = list(ensemble.predict_iter(files, batch_size=2, num_workers=0))
    workers = list(ensemble.predict_iter(files, batch_size=2, num_workers=2))
    assert [p.file for p in workers] == [str(f) for f in files] and sum(not p.ok for p in workers) == 1
    for s, w in zip(serial, workers, strict=True):
        assert s.row == w.row
