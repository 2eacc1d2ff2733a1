"""The same seed on CPU gives the same splits, per-epoch metrics and predictions; the data fingerprint tracks files."""

from __future__ import annotations

import json

import pandas as pd
from hydra import compose, initialize_config_dir

from lungnet.data.sources import create_source
from lungnet.provenance import data_fingerprint
from lungnet.train.training import train
from tests.conftest import CONF, make_class_folders, write_png


def _run(data, run, workers: int) -> dict:
    overrides = [
        "data=pneumonia",
        f"data.root={data}",
        "data.carve_val=true",
        "data.val_fraction=0.25",
        "model=simple_cnn",
        "model.drop_rate=0.3",
        "augment=light",
        "data.image_size=32",
        "data.batch_size=8",
        f"data.num_workers={workers}",
        "data.persistent_workers=false",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        "log_figures_every=100",
        "seed=7",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    return train(cfg, run)


def _val_columns(run) -> pd.DataFrame:
    log = pd.read_csv(run / "csv" / "metrics.csv")
    cols = [c for c in log.columns if c.startswith("val/")]
    return log.dropna(subset=cols, how="all")[["epoch", *cols]].reset_index(drop=True)


def test_same_seed_same_everything_with_any_num_workers(tmp_path):
    data = make_class_folders(tmp_path / "pneu", ["NORMAL", "PNEUMONIA"], 16, ["train", "test"])
    a, b = tmp_path / "a", tmp_path / "b"
    _run(data, a, workers=0)
    _run(data, b, workers=1)
    for split in ("train", "val", "test"):
        assert (a / "splits" / f"{split}.csv").read_bytes() == (b / "splits" / f"{split}.csv").read_bytes()
    assert len(_val_columns(a)) == 2
    pd.testing.assert_frame_equal(_val_columns(a), _val_columns(b), rtol=0, atol=1e-7)
    probs_a = pd.read_csv(a / "predictions_test.csv")
    probs_b = pd.read_csv(b / "predictions_test.csv")
    assert probs_a.filter(like="p_").shape == (32, 2)
    pd.testing.assert_frame_equal(probs_a, probs_b, rtol=0, atol=1e-7)
    fa = json.loads((a / "environment.json").read_text())["data_fingerprint"]
    assert fa == json.loads((b / "environment.json").read_text())["data_fingerprint"]


def test_fingerprint_changes_when_a_file_is_added_or_resized(tmp_path):
    data = make_class_folders(tmp_path / "pneu", ["NORMAL", "PNEUMONIA"], 3)

    def fingerprint() -> str:
        return data_fingerprint(create_source("pneumonia", data).scan())

    first = fingerprint()
    assert fingerprint() == first
    write_png(data / "NORMAL" / "new.png", 99)
    added = fingerprint()
    assert added != first
    write_png(data / "NORMAL" / "new.png", 99, size=48)  # same name, other size
    assert fingerprint() not in (first, added)
