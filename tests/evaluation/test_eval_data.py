"""What an evaluation reads: ``split=all`` at another root, in the layout of the checkpoint's own data set; a
checkpoint's data config is read, never a licence to write."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from lungnet.artifacts.checkpoint import load_model
from lungnet.data.sources import DataError, LabelledFolderSource, create_source
from lungnet.evaluation.eval_data import all_images_source, build_eval_data
from lungnet.evaluation.pipeline import evaluate
from lungnet.train.training import train
from tests.conftest import compose_cfg, write_png
from tests.evaluation.conftest import FAST_EVAL, TINY
from tests.serve.test_inference import make_checkpoint

FINDINGS = ["No Finding", "Effusion", "Pneumonia", "Infiltration"]  # data=nih6 without Atelectasis and Edema
NIH6 = ["data=nih6", f"data.options.findings=[{','.join(FINDINGS)}]"]
COLUMNS = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position"


def write_nih_folder(root: Path, patients: range, seed: int) -> Path:
    """An NIH-layout folder: ``Data_Entry_2017.csv`` (the official column names) and two PNGs per patient under
    ``images/``, cycling through `FINDINGS`, four age bands, both sexes and two views; one Edema image too."""
    rows = [COLUMNS]
    for k, (patient, follow) in enumerate((p, f) for p in patients for f in range(2)):
        name = f"{patient:08d}_{follow:03d}.png"
        write_png(root / "images" / name, seed + k)
        sex, view, age = "MF"[k % 2], ("PA", "AP")[k % 3 > 0], (8, 30, 50, 70)[k // 4 % 4]
        rows.append(f"{name},{FINDINGS[k % len(FINDINGS)]},{follow},{patient},{age},{sex},{view}")
    write_png(root / "images" / "00009999_000.png", seed + 999)
    rows.append("00009999_000.png,Edema,0,9999,40,F,PA")  # a finding the model was not trained on: not read
    (root / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def nih6_run(tmp_path_factory) -> Path:
    """A simple CNN trained with data=nih6 (four findings) on one NIH-layout folder, and another site's folder in
    the same layout (other patients, other images) beside it as ``site``."""
    tmp = tmp_path_factory.mktemp("nih6_all")
    write_nih_folder(tmp / "nih", range(1, 17), seed=0)
    write_nih_folder(tmp / "site", range(101, 109), seed=1000)
    train(compose_cfg("train", [*NIH6, f"data.root={tmp / 'nih'}", "trainer.max_epochs=1", *TINY]), tmp / "run")
    return tmp


@pytest.mark.parametrize("chosen", [[], NIH6], ids=["checkpoint_source", "data=nih6"])
def test_split_all_reads_every_image_of_an_nih_layout_folder_with_subgroups(nih6_run, chosen):
    """Before: split=all read the root as class folders ("Folder <root>/images does not match any label of
    dataset 'folder'"), for a checkpoint of a CSV-labelled data set as for a folder one."""
    out = nih6_run / f"eval_{len(chosen)}"
    fast = [*FAST_EVAL, "bootstrap.resamples=50", "explain.n=0", "report.figures=false", "report.html=false"]
    overrides = [f"data.root={nih6_run / 'site'}", "split=all", *fast, "subgroups.min_n=2"]
    cfg = compose_cfg("evaluate", [f"ckpt={nih6_run / 'run' / 'checkpoints' / 'best.ckpt'}", *chosen, *overrides])
    result = evaluate(cfg, out)
    assert result["n"] == 16 and not result.get("external")
    assert result["class_counts"] == {lab: 4 for lab in FINDINGS}
    scored = pd.read_csv(out / "predictions.csv")["path"].map(lambda p: Path(p).name)
    assert set(scored) == {f"{p:08d}_{f:03d}.png" for p in range(101, 109) for f in range(2)}
    frame = pd.read_csv(out / "subgroups.csv")
    assert set(frame["attribute"]) == {"age", "sex", "view"}
    assert set(frame.loc[frame["attribute"] == "age", "group"]) == {"0-17", "18-39", "40-59", "60+"}
    assert "subgroups" in json.loads((out / "metrics.json").read_text())
    report = (out / "report.md").read_text()
    assert "## Subgroups" in report and f"nih6 at `{nih6_run / 'site'}`" in report


@pytest.mark.parametrize(
    ("source", "labels", "multilabel", "expected"),
    [
        ("nih6", ["No Finding", "Pneumonia"], False, "nih6"),  # labelled by its CSV: read by its own source
        ("nih14", None, True, "nih14"),
        ("pneumonia", ["NORMAL", "PNEUMONIA"], False, "folder"),  # class folders named like the labels
        ("synthetic", ["Normal", "Haze"], False, "folder"),  # read, never generated into
    ],
)
def test_all_images_source_follows_the_checkpoint_layout(tmp_path, source, labels, multilabel, expected):
    options = {"findings": labels} if source == "nih6" else {}
    loaded = SimpleNamespace(labels=labels, multilabel=multilabel)
    chosen = all_images_source(create_source(source, tmp_path, **options), loaded)
    assert chosen.name == expected and chosen.root == tmp_path.resolve()
    if expected == "folder":
        assert isinstance(chosen, LabelledFolderSource) and chosen.labels == labels


def test_class_folders_cannot_hold_a_multilabel_checkpoint(tmp_path):
    loaded = SimpleNamespace(labels=["NORMAL", "PNEUMONIA"], multilabel=True)
    with pytest.raises(DataError, match="cannot hold multi-label targets"):
        all_images_source(create_source("pneumonia", tmp_path), loaded)


def test_a_checkpoint_naming_synthetic_data_anywhere_generates_nothing_there(tmp_path):
    ckpt = make_checkpoint(tmp_path / "best.ckpt", labels=["Normal", "Consolidation", "Cavity", "Haze"])
    state = torch.load(ckpt, weights_only=True)
    anywhere = tmp_path / "anywhere"
    data = {"name": "synthetic", "source": "synthetic", "root": str(anywhere), "options": {"n_per_class": 2}}
    state["hyper_parameters"]["data"].update(data)
    torch.save(state, ckpt)
    run_dir = tmp_path / "run"
    with pytest.raises(DataError, match="generates synthetic data only when training") as exc:
        build_eval_data(load_model(ckpt), {}, "test", run_dir)
    assert "\n" not in str(exc.value) and str(anywhere) in str(exc.value)
    assert not anywhere.exists() and not run_dir.exists()
