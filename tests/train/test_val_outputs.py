"""The finish after training reuses the selected epoch's validation pass (issue #27 §3), and ``test=false`` leaves
test to evaluate.py."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from lungnet.artifacts.checkpoint import load_model
from lungnet.data.datamodule import LungDataModule
from lungnet.evaluation.after_training import finish_training
from lungnet.evaluation.eval_data import data_config
from lungnet.scoring.outputs import Outputs, model_outputs
from lungnet.train.training import train
from lungnet.train.val_outputs import ValidationOutputs, assemble, reusable_val
from tests.conftest import compose_cfg
from tests.evaluation.conftest import TINY


def batch(indices, n_classes=2):
    """A fake validation batch's ``(indices, logits, features, targets, paths)``: logit 0 is the index."""
    idx = np.asarray(indices)
    logits = np.stack([idx.astype(np.float32), np.zeros(len(idx), np.float32)], axis=1)[:, :n_classes]
    return idx, logits, idx[:, None].astype(np.float32), idx % 2, [f"img{i}.png" for i in idx]


def test_two_ranks_shards_with_padding_come_back_in_the_data_sets_order():
    # DistributedSampler(shuffle=False) over 5 images on 2 ranks: rank 0 gets 0 2 4, rank 1 gets 1 3 and 0 (padding)
    out = assemble([batch([1, 3]), batch([0]), batch([0, 2]), batch([4])], n=5, multilabel=False)
    assert out.paths == [f"img{i}.png" for i in range(5)]
    assert out.logits[:, 0].tolist() == [0, 1, 2, 3, 4] and out.features[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert out.targets.tolist() == [0, 1, 0, 1, 0]
    assert np.allclose(out.probs.sum(1), 1)


def test_a_partial_pass_is_not_kept():
    assert assemble([batch([0, 1, 2])], n=5, multilabel=False) is None  # limit_val_batches
    assert assemble([], n=5, multilabel=False) is None


@pytest.mark.parametrize(("mode", "scores", "best"), [("max", [0.5, 0.7, 0.7, 0.6], 1), ("min", [3, 2, 2, 4], 1)])
def test_the_best_pass_is_the_first_strictly_better_one(mode, scores, best):
    kept = ValidationOutputs("val/auroc", mode)
    passes = [assemble([batch([0, 1])], 2, False) for _ in scores]
    for epoch, (out, score) in enumerate(zip(passes, scores, strict=True)):
        kept.keep(epoch, out, score)
    assert kept.best[0] == best and kept.last[0] == len(scores) - 1
    assert [epoch for epoch, _ in kept.candidates()] == [best, len(scores) - 1]


@pytest.fixture(scope="module")
def run_without_test(tmp_path_factory):
    """A 2-epoch run with ``test=false``: its run directory and log records."""
    tmp = tmp_path_factory.mktemp("val_outputs")
    overrides = [f"data.root={tmp / 'syn'}", "data.options.n_per_class=10", "data.options.size=32", *TINY]
    cfg = compose_cfg("train", [*overrides, "trainer.max_epochs=2", "test=false"])
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("lungnet")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        train(cfg, tmp / "run")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return tmp / "run", [r.getMessage() for r in records]


def rescored(run, where):
    """`finish_training` on the run's checkpoint in a fresh data module: every split scored again."""
    loaded = load_model(run / "checkpoints" / "best.ckpt")
    dm = LungDataModule(data_config(loaded, {}), loaded.spec, seed=loaded.seed)
    dm.setup("fit")
    cfg = OmegaConf.load(run / "config.yaml")
    return finish_training(cfg, run / "checkpoints" / "best.ckpt", dm, where, progress_bar=False), loaded, dm


def test_the_finish_reuses_the_validation_pass_with_the_same_results(run_without_test, tmp_path):
    run, logged = run_without_test
    assert any(m.startswith("Val outputs: reused from the validation pass of epoch") for m in logged), logged
    assert not any(m.startswith("Predicting val") for m in logged)
    metrics = json.loads((run / "metrics.json").read_text())
    again, _, _ = rescored(run, tmp_path)
    for key, value in again["val"].items():
        if isinstance(value, float):
            assert metrics["val"][key] == pytest.approx(value, abs=1e-6, nan_ok=True), key
    ours, theirs = pd.read_csv(run / "predictions_val.csv"), pd.read_csv(tmp_path / "predictions_val.csv")
    pd.testing.assert_frame_equal(ours, theirs, atol=1e-6)


def test_with_test_false_training_leaves_test_to_evaluate(run_without_test):
    run, logged = run_without_test
    metrics = json.loads((run / "metrics.json").read_text())
    assert "test" not in metrics and "val" in metrics and not (run / "predictions_test.csv").exists()
    assert len(pd.read_csv(run / "splits" / "test.csv")) > 0  # the data has a test split
    assert any("test=false" in m and "split=test" in m for m in logged), logged


def test_a_pass_of_other_weights_is_not_reused(run_without_test, tmp_path):
    run, _ = run_without_test
    _, loaded, dm = rescored(run, tmp_path)
    kept = ValidationOutputs("val/auroc", "max")
    out = finish_outputs(loaded, dm)
    kept.keep(0, out, 0.5)
    assert reusable_val(kept, loaded, dm, "cpu") is out
    nudged = dataclasses.replace(out, logits=out.logits + 1e-3)  # another epoch's weights, a 16-bit pass
    kept = ValidationOutputs("val/auroc", "max")
    kept.keep(0, nudged, 0.5)
    assert reusable_val(kept, loaded, dm, "cpu") is None


def finish_outputs(loaded, dm) -> Outputs:
    """The checkpoint's val outputs with features, as the finish computes them."""
    return model_outputs(loaded.model, dm.loader("val"), loaded.multilabel, "cpu", "val", True, "val")
