"""bench/perf/finish_rest.py: the finish's work after scoring, on synthetic outputs of given split sizes."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest

from bench.perf.finish_rest import finish_rest, over_epoch
from lungnet.artifacts.checkpoint import load_model
from lungnet.artifacts.decision import read_decision
from lungnet.artifacts.paths import decision_path
from tests.evaluation.conftest import tiny_run  # noqa: F401  (the shared trained run)


def test_the_finish_runs_on_synthetic_outputs_of_the_given_sizes_and_times_its_parts(tiny_run, tmp_path):  # noqa: F811
    run = tmp_path / "run"  # a copy: the bench replaces the checkpoint's decision file
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_run / "config.yaml", run / "config.yaml")
    ckpt = shutil.copy(tiny_run / "checkpoints" / "best.ckpt", run / "checkpoints" / "best.ckpt")
    args = argparse.Namespace(test=40, trainval=120, val_fraction=0.25, feature_dim=24, resamples=20, seed=0)
    got = finish_rest(ckpt, run, args)
    assert got["images"] == {"test": 40, "val": 30, "train": 90} and got["train_split"] == 90
    assert got["finish_rest"]["cpu_s"] > 0
    parts = {"bootstrap intervals", "OOD gate fit", "decisions (with the gate)", "gate squares", "gate axes"}
    assert parts <= set(got["parts_cpu_s"])
    record = read_decision(decision_path(ckpt), ckpt, load_model(ckpt).labels)
    assert record.ood_fit_n == 90 and record.counts["n"] == 30  # fitted on the synthetic sample, thresholded on val


def test_the_ratio_to_an_epoch_uses_the_scale_records_costs_per_image(tmp_path):
    scale = {
        "machine": {"model": "Test CPU"},
        "date": "2026-12-07",
        "result": {
            "results": {
                "1000": {
                    "finish_scoring": {"test_images": 150, "train_images": 750, "probe_images": 100},
                    "finish_loading": {"cpu_s": 0.1},  # 0.1 ms per image
                    "epoch_store": {"cpu_s": 1.0},  # 1 ms per image
                }
            }
        },
    }
    path = tmp_path / "scale.json"
    path.write_text(json.dumps(scale))
    result = {"images": {"test": 968, "train": 1000, "val": 500}, "train_split": 4000, "finish_rest": {"cpu_s": 0.2}}
    got = over_epoch(result, path)
    assert got["loading_cpu_s"] == pytest.approx(0.2)  # (968 + 1000 + 32) images at 0.1 ms
    assert got["epoch_cpu_s"] == pytest.approx(4.0)
    assert got["1rank"] == pytest.approx(0.1)
    assert got["8rank"] == pytest.approx((0.2 / 8 + 0.2) / 0.5)
    # under --ranks 2: rank 0's measured rest with half the loading and half the epoch
    two = over_epoch({**result, "world": 2}, path)
    assert two["2rank"] == pytest.approx((0.2 / 2 + 0.2) / 2.0) and "8rank" not in two


def test_under_two_gloo_ranks_rank_0_finishes_with_the_summed_gate_statistics(tiny_run, tmp_path):  # noqa: F811
    from bench.perf.finish_rest import finish_rest_ranks

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_run / "config.yaml", run / "config.yaml")
    ckpt = shutil.copy(tiny_run / "checkpoints" / "best.ckpt", run / "checkpoints" / "best.ckpt")
    args = argparse.Namespace(test=40, trainval=120, val_fraction=0.25, feature_dim=24, resamples=20, seed=0, ranks=2)
    got = finish_rest_ranks(ckpt, run, args)
    assert got["world"] == 2 and [r["rank"] for r in got["ranks"]] == [0, 1]
    assert got["finish_rest"]["cpu_s"] >= got["finish_rest"]["finish_training"]["cpu_s"] > 0
    record = read_decision(decision_path(ckpt), ckpt, load_model(ckpt).labels)
    assert record.ood_fit_n == 90 and record.counts["n"] == 30  # both ranks' halves of the sample


def test_with_a_loader_record_both_costs_come_from_that_run(tmp_path):
    loader = {
        "machine": {"model": "Test CPU"},
        "date": "2026-12-07",
        "result": {
            "results": [
                {"mode": "eval_bytes", "cpu_ms_per_image": 0.3, "device_step_cpu_ms_per_image": 0.2},
                {"mode": "store", "cpu_ms_per_image": 1.0, "device_step_cpu_ms_per_image": 0.0},
            ]
        },
    }
    path = tmp_path / "loader.json"
    path.write_text(json.dumps(loader))
    result = {"images": {"test": 968, "train": 1000, "val": 500}, "train_split": 4000, "finish_rest": {"cpu_s": 0.2}}
    got = over_epoch(result, tmp_path / "unused.json", path)
    assert got["loading_cpu_s"] == pytest.approx(0.2)  # (968 + 1000 + 32) images at 0.1 ms: the bytes alone
    assert got["1rank"] == pytest.approx(0.1)  # (0.2 + 0.2) / 4.0
    assert got["1rank_cpu_only"] == pytest.approx((0.2 + 0.4 + 0.2) / 4.0)  # normalised on the CPU: 0.2 ms more
    parts = {"gate squares": 0.05, "gate axes": 0.03, "bootstrap intervals": 0.1}
    gpu = over_epoch({**result, "parts_cpu_s": parts}, tmp_path / "unused.json", path)
    assert gpu["1rank_gpu"] == pytest.approx((0.2 + 0.2 - 0.08) / 4.0)  # the squares and axes on the device
