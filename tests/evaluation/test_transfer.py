"""Generalisation matrix: two tiny models on each other's data, left-out labels, seen images, drops with intervals."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lungnet.commands.transfer import data_names
from lungnet.data.synthetic import generate
from lungnet.evaluation.generalisation import transfer
from lungnet.train.training import train
from tests.conftest import ROOT, compose_cfg
from tests.evaluation.conftest import TINY

# phantoms all look alike to a 256-bit dHash (unrelated ones within 12 bits): exact copies only here; near copies are
# tested on real-looking images in tests/data/test_overlap.py
FAST = ["bootstrap.resamples=100", "num_workers=0", "near_duplicates=false"]


def copy_class(src: Path, dst: Path, files: list[Path]) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy(f, dst / f"{src.name}_{f.name}")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> Path:
    """A: pneumonia layout (NORMAL / PNEUMONIA); B: DarkCovidNet layout, whose No_findings hold 4 of A's training
    images (copies)."""
    tmp = tmp_path_factory.mktemp("transfer")
    a = generate(tmp / "syn_a", n_per_class=14, size=96, seed=0) / "images"
    b = generate(tmp / "syn_b", n_per_class=14, size=96, seed=5) / "images"
    for split, part in (("train", slice(0, 9)), ("val", slice(9, 14))):
        for cls, folder in (("NORMAL", "Normal"), ("PNEUMONIA", "Consolidation")):
            copy_class(a / folder, tmp / "data" / "chest" / split / cls, sorted((a / folder).glob("*.png"))[part])
    for cls, folder in (("Covid-19", "Haze"), ("No_findings", "Normal"), ("Pneumonia", "Consolidation")):
        copy_class(b / folder, tmp / "data" / "darkcovidnet" / cls, sorted((b / folder).glob("*.png")))
    seen = sorted((tmp / "data" / "chest" / "train" / "NORMAL").glob("*.png"))[:4]
    for f in seen:
        shutil.copy(f, tmp / "data" / "darkcovidnet" / "No_findings" / f"seen_{f.name}")
    common = ["trainer.max_epochs=1", *TINY]
    train(
        compose_cfg(
            "train", ["data=pneumonia", f"data.root={tmp / 'data' / 'chest'}", "data.carve_val=false", *common]
        ),
        tmp / "run_a",
    )
    train(
        compose_cfg(
            "train",
            ["data=darkcovidnet", f"data.root={tmp / 'data' / 'darkcovidnet'}", "data.val_fraction=0.5", *common],
        ),
        tmp / "run_b",
    )
    return tmp


def run_transfer(tmp: Path, name: str, overrides: list[str]) -> dict:
    cfg = compose_cfg("transfer", [f"runs=[{tmp / 'run_a'},{tmp / 'run_b'}]", *FAST, *overrides])
    return transfer(cfg, tmp / name)


def cells(result: dict) -> dict:
    return {(c["row"], c["column"]): c for line in result["cells"] for c in line}


def test_matrix_scores_every_model_on_every_data_set(two_runs):
    result = run_transfer(two_runs, "out", [])
    assert [r["name"] for r in result["rows"]] == ["pneumonia / simple_cnn", "darkcovidnet / simple_cnn"]
    assert [(c["name"], c["split"]) for c in result["columns"]] == [("pneumonia", "val"), ("darkcovidnet", "val")]
    got = cells(result)
    a_on_b = got[("pneumonia / simple_cnn", "darkcovidnet")]
    assert a_on_b["status"] == "ok" and not a_on_b["internal"]
    assert a_on_b["scored"] == ["No Finding", "Pneumonia"] and set(a_on_b["left_out"]) == {"Covid-19"}
    b_on_a = got[("darkcovidnet / simple_cnn", "pneumonia")]
    assert b_on_a["unscored_model_labels"] == ["Covid-19"] and b_on_a["n"] == 10
    internal = got[("darkcovidnet / simple_cnn", "darkcovidnet")]
    assert internal["internal"] and internal["scored"] == ["COVID-19", "No Finding", "Pneumonia"]
    for d in result["drops"]:
        assert d["lo"] <= d["drop"] <= d["hi"] and d["scored"] == ["No Finding", "Pneumonia"]
    assert {(d["row"], d["column"]) for d in result["drops"]} == {
        ("pneumonia / simple_cnn", "darkcovidnet"),
        ("darkcovidnet / simple_cnn", "pneumonia"),
    }
    for name in ("transfer.md", "transfer.json", "transfer.png"):
        assert (two_runs / "out" / name).is_file()
    assert "## Drop from internal to external" in (two_runs / "out" / "transfer.md").read_text()


def test_copies_of_training_images_are_dropped_or_refused(two_runs):
    column = json.loads((two_runs / "out" / "transfer.json").read_text())
    a_on_b = cells(column)[("pneumonia / simple_cnn", "darkcovidnet")]
    val = (two_runs / "run_b" / "splits" / "val.csv").read_text()
    expected = val.count("seen_")
    assert expected > 0 and a_on_b["n_seen"] == expected
    refused = cells(run_transfer(two_runs, "refuse", ["overlap=refuse", "findings=[No Finding,Pneumonia]"]))
    assert refused[("pneumonia / simple_cnn", "darkcovidnet")]["status"].startswith(f"refused: {expected} images")
    assert refused[("darkcovidnet / simple_cnn", "darkcovidnet")]["scored"] == ["No Finding", "Pneumonia"]


def test_data_names_from_the_command_line():
    assert data_names(["runs=x", "data=[pneumoniamnist,nih_pneumonia]"]) == ["pneumoniamnist", "nih_pneumonia"]
    assert data_names(["data=darkcovidnet", "data.root=x"]) == ["darkcovidnet"]
    assert data_names(["runs=x"]) == []


def test_command_line_with_an_extra_data_set(two_runs):
    out = two_runs / "cli"
    cmd = [
        sys.executable,
        "-m",
        "lungnet.evaluation.transfer",
        f"runs={two_runs / 'run_a'}",
        "data=[darkcovidnet]",
        f"paths.data_root={two_runs / 'data'}",
        f"hydra.run.dir={out}",
        *FAST,
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "transfer.json").read_text())
    assert [(c["name"], c["split"], c["n"]) for c in result["columns"]] == [
        ("pneumonia", "val", 10),
        ("darkcovidnet", "all", 46),
    ]
    assert cells(result)[("pneumonia / simple_cnn", "darkcovidnet")]["n_seen"] == 4


def test_cell_labels_say_whether_training_copies_were_dropped_or_kept():
    from lungnet.evaluation.transfer_report import cell_label

    cell = {"status": "ok", "auroc": {"value": 0.9, "lo": 0.8, "hi": 0.95}, "n": 40, "n_seen": 3}
    assert "3 seen in training dropped" in cell_label({**cell, "policy": "drop"})
    assert "3 seen in training kept" in cell_label({**cell, "policy": "allow"})


def test_the_model_card_names_the_subgroup_section_only_when_there_is_one():
    from types import SimpleNamespace

    from lungnet.evaluation.model_card import factors

    assert "no subgroup metadata was evaluated" in factors(SimpleNamespace(split="test", result={}))
    with_groups = factors(SimpleNamespace(split="test", result={"subgroups": {"rows": [], "gaps": []}}))
    assert "subgroup section" in with_groups and "no subgroup" not in with_groups
