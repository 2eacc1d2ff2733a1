"""bench.perf.scale, the scale benchmark of issue #27 §6: its setup stages and growth fits on a tiny generated set."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
from PIL import Image

from tests.conftest import run_module


def test_scale_bench_times_the_setup_stages_and_fits_their_growth(tmp_path):
    """Two sizes of an NIH-like set drawn from four tiny radiographs: every setup stage is timed at both sizes, the
    second setup reads the manifest (cheaper than the first scan), and each stage gets a finite growth exponent."""
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    with open(src / "Data_Entry_2017.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Image Index", "Finding Labels", "Follow-up #", "Patient ID"])
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (128, 128), dtype=np.uint8)).save(src / "images" / f"{i}.png")
            writer.writerow([f"{i}.png", "No Finding" if i % 2 else "Effusion", 0, i])
    out = tmp_path / "scale.json"
    args = ["--src", str(src), "--sizes", "40", "80", "--size", "128", "--skip", "loading", "train"]
    done = run_module("bench.perf.scale", [*args, "--work", str(tmp_path / "work"), "--out", str(out)])
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(out.read_text())["result"]
    assert sorted(record["results"]) == ["40", "80"]
    for stages in record["results"].values():
        assert set(stages) == {"scan_first", "setup_second", "near_duplicates"}
        assert stages["setup_second"]["cpu_s"] < stages["scan_first"]["cpu_s"]
    assert set(record["fits"]) == {"scan_first", "setup_second", "near_duplicates"}
    assert all(math.isfinite(fit["exponent"]) for fit in record["fits"].values())
    assert "| scan_first |" in out.with_suffix(".md").read_text()
    rows = {row["figure"]: row["value"] for row in json.loads(out.read_text())["figures"]}  # what bench.render shows
    scan = record["results"]["80"]["scan_first"]["cpu_s"]
    assert f"{scan:.4g} CPU s; exponent" in rows["scan_first, NIH-like 128 px, N = 40 / 80"]
    assert rows["second setup / first scan, N = 40 / 80 (target under 2 %)"].count("%") == 2


def test_scale_bench_times_one_epochs_loading_from_the_store_and_the_files(tmp_path):
    """The loading stages (`bench.perf.loader`'s in-process measure) on six tiny images: both paths and the store
    build get positive CPU and wall seconds."""
    from bench.perf.scale import loading_stages

    rng = np.random.default_rng(0)
    (tmp_path / "set" / "images").mkdir(parents=True)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(tmp_path / "set" / "images" / f"{i}.png")
    got = loading_stages(tmp_path / "set", 32, tmp_path / "store")
    assert set(got) == {"epoch_store", "epoch_direct", "store_build"}
    assert all(stage["cpu_s"] > 0 and stage["wall_s"] > 0 for stage in got.values()), got
