"""Leave one source out (lungnet.evaluation.loso): two tiny sets, each set's model, and one model on both."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lungnet.errors import DataError
from lungnet.evaluation.loso import designs, loso, patient_groups, trained_on
from lungnet.train.training import train
from tests.conftest import ROOT, TINY, compose_cfg, make_class_folders, offline_env, write_png

# random-noise PNGs look alike to a 256-bit dHash: exact copies only here (near copies: tests/data/test_overlap.py)
FAST = ["bootstrap.resamples=50", "num_workers=0", "near_duplicates=false"]


def train_names(run: Path) -> set[str]:
    """The file names (copies under their original name) of a run's training images."""
    paths = pd.read_csv(run / "splits" / "train.csv")["path"].astype(str)
    return {Path(p).name.removeprefix("copy_") for p in paths}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """pneumonia (train/val/test folders; its NORMAL test films include copies of all DarkCovidNet's No_findings)
    and DarkCovidNet (no test split); trained on each alone and on both (data=multi)."""
    tmp = tmp_path_factory.mktemp("loso")
    splits = ["train", "val", "test"]
    pneumonia = make_class_folders(tmp / "data" / "chest_xray", ["NORMAL", "PNEUMONIA"], 8, splits, 40)
    dark = tmp / "data" / "darkcovidnet"
    for c, cls in enumerate(("Covid-19", "No_findings", "Pneumonia")):
        for i in range(12):
            name = f"covid_{i}.png" if cls == "Covid-19" else f"{20 * c + i:08d}_000.png"
            write_png(dark / cls / name, 700 + 20 * c + i, size=36)
    for f in sorted((dark / "No_findings").glob("*.png")):
        shutil.copy(f, pneumonia / "test" / "NORMAL" / f"copy_{f.name}")
    common = [f"paths.data_root={tmp / 'data'}", *TINY]
    for name, data in (
        ("pneumonia", ["data=pneumonia", "data.carve_val=false"]),
        ("darkcovidnet", ["data=darkcovidnet"]),
        ("both", ["data=multi", "data.sources=[darkcovidnet,pneumonia]"]),
    ):
        train(compose_cfg("train", [*data, *common]), tmp / "runs" / name)
    return tmp


def test_each_held_out_set_is_scored_by_all_three_models_on_the_same_images(runs):
    cfg = compose_cfg("loso", [f"runs={runs / 'runs'}", *FAST])
    result = loso(cfg, runs / "out")
    rows = {r["held_out"]: r for r in result["rows"]}
    assert set(rows) == {"pneumonia", "darkcovidnet"}
    pn = rows["pneumonia"]
    assert pn["models"] == {
        "loso": "darkcovidnet / simple_cnn",
        "single": "pneumonia / simple_cnn",
        "pooled": "darkcovidnet+pneumonia / simple_cnn",
    }
    # the copies the LOSO or the all-sources model trained on are left out of the column for every model
    seen = {f.name for f in (runs / "data" / "darkcovidnet" / "No_findings").glob("*.png")} & (
        train_names(runs / "runs" / "darkcovidnet") | train_names(runs / "runs" / "both")
    )
    assert pn["split"] == "test" and pn["dropped"] == len(seen) > 0
    assert pn["n_column"] == 16 + 12 - len(seen) and pn["findings"] == ["No Finding", "Pneumonia"]
    assert {c["n"] for c in pn["cells"].values()} == {pn["n_column"]}  # paired: the same images for every model
    dc = rows["darkcovidnet"]
    assert dc["split"] == "val" and dc["findings"] == ["No Finding", "Pneumonia"]  # the LOSO model knows no COVID-19
    val = pd.read_csv(runs / "runs" / "darkcovidnet" / "splits" / "val.csv")
    assert dc["n_column"] + dc["dropped"] == len(val)  # less the all-sources model's training images (its own split)
    assert all(set(c["left_out"]) == {"Covid-19"} for c in dc["cells"].values())
    assert len({(c["status"], c.get("n")) for c in dc["cells"].values()}) == 1
    for row in rows.values():
        for d in filter(None, row["diffs"].values()):
            assert d["lo"] <= d["diff"] <= d["hi"] and d["unit"] in ("image", "patient")
            assert d["diff"] == pytest.approx(d["a"] - d["b"])
    assert pn["diffs"]["loso_minus_single"]["a"] == pytest.approx(pn["cells"]["loso"]["auroc"]["value"])
    table = pd.read_csv(runs / "out" / "loso.csv")
    assert set(table["held_out"]) == {"pneumonia", "darkcovidnet"} and "loso_minus_pooled_lo" in table
    md = (runs / "out" / "loso.md").read_text()
    assert "# Leave one source out" in md and "LOSO - alone [95% CI]" in md


def test_which_sets_a_checkpoint_was_trained_on_is_type_checked():
    assert trained_on({"hyper_parameters": {"data": {"source": "multi", "sources": ["a", "b"]}}}, Path("x")) == (
        "a",
        "b",
    )
    assert trained_on({"hyper_parameters": {"data": {"name": "pneumonia", "source": "pneumonia"}}}, Path("x")) == (
        "pneumonia",
    )
    for bad in ({}, {"hyper_parameters": {"data": {"source": "multi", "sources": "a,b"}}}, {"hyper_parameters": 3}):
        with pytest.raises(DataError, match="x: "):
            trained_on(bad, Path("x"))


def test_a_held_out_set_needs_its_single_source_model():
    from types import SimpleNamespace

    def model(*sources):
        return SimpleNamespace(sources=sources, row=SimpleNamespace(name="+".join(sources)))

    found = designs([model("a", "b"), model("c"), model("a", "c"), model("b", "c"), model("a"), model("b")])
    assert [d["held_out"] for d in found] == ["a", "b", "c"] and found[0]["pooled"] is None
    with pytest.raises(DataError, match="no model trained on b alone"):
        designs([model("a", "c"), model("b", "c"), model("a")])
    with pytest.raises(DataError, match="no model was trained on all sets but one"):
        designs([model("a", "b", "c")])


def test_patients_are_the_resampling_unit_where_the_set_names_them():
    table = pd.DataFrame({"path": ["p1", "p2", "p3"], "patient": ["nih:1", "", "nih:1"]})
    groups = patient_groups(table)
    assert groups[0] == groups[2] != groups[1]
    assert patient_groups(table.assign(patient="")) is None


def test_command_line_writes_the_table(runs):
    out = runs / "cli"
    cmd = [sys.executable, "-m", "lungnet.commands.loso", f"runs={runs / 'runs'}", f"hydra.run.dir={out}", *FAST]
    env = offline_env(PYTHONPATH=str(ROOT))
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "loso.json").read_text())
    assert {r["held_out"] for r in result["rows"]} == {"pneumonia", "darkcovidnet"}
    assert (out / "loso.csv").is_file() and (out / "loso.md").is_file()
    only_pooled = subprocess.run(
        [*cmd[:3], f"runs={runs / 'runs' / 'both'}", f"hydra.run.dir={runs / 'refused'}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    said = only_pooled.stdout + only_pooled.stderr
    assert only_pooled.returncode == 2 and "no model was trained on all sets but one" in said
    assert not (runs / "refused").exists()
