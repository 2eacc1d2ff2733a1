"""bench/perf/gpu_parts.py: what issue #27 moves to the accelerator, run here on the CPU device against the host."""

from __future__ import annotations

import argparse

import pytest

from bench.perf import gpu_parts
from bench.perf.throughput import data_options


def tiny(**kw) -> argparse.Namespace:
    base = dict(device="cpu", batch=4, size=32, in_chans=3, rows=400, features=24, repeats=1, seed=0)
    return argparse.Namespace(**{**base, "parts": list(gpu_parts.PARTS), **kw})


def test_every_part_runs_on_the_cpu_device_and_agrees_with_the_host():
    got = gpu_parts.run(tiny())
    assert got["normalize"]["equal_to_host"] and got["normalize"]["ms_per_image"] > 0
    gate = got["gate"]
    assert gate["squares_max_rel_diff"] < 1e-5 and gate["eigenvalues_max_rel_diff"] < 1e-4
    assert gate["gate_scores_max_rel_diff"] < 1e-3
    assert got["reduce"]["backend"] == "gloo" and got["reduce"]["scatter_max_rel_diff"] < 1e-6


def test_a_failing_part_is_recorded_with_its_error_and_the_others_still_run(monkeypatch):
    def broken(args, device):
        raise RuntimeError("no such kernel")

    monkeypatch.setitem(gpu_parts.PARTS, "normalize", broken)
    got = gpu_parts.run(tiny(parts=["normalize", "gate"]))
    assert got["normalize"] == {"error": "RuntimeError: no such kernel"}
    assert got["gate"]["squares_max_rel_diff"] < 1e-5


def test_throughputs_data_options_are_key_value_pairs_read_as_yaml():
    assert data_options(["n_per_class=500", "size=256", "name=x"]) == {"n_per_class": 500, "size": 256, "name": "x"}
    with pytest.raises(SystemExit, match="not key=value"):
        data_options(["n_per_class"])
