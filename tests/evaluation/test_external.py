"""External evaluation (data=<another data set>) and the refusal of images a checkpoint was trained on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from lungnet.artifacts.checkpoint import read_checkpoint
from lungnet.commands import audit as audit_cmd
from lungnet.commands import evaluate as evaluate_cmd
from lungnet.data.sources import DataError
from lungnet.data.synthetic import generate
from lungnet.evaluation.pipeline import evaluate
from lungnet.train.training import train
from tests.conftest import compose_cfg, run_cli
from tests.evaluation.conftest import FAST_EVAL, TINY

NO_EXPLAIN = [*FAST_EVAL, "explain.n=0"]


def copy_class(src: Path, dst: Path, n: int, offset: int = 0) -> list[Path]:
    """Copies ``n`` images of one synthetic class folder into ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    files = sorted(src.glob("*.png"))[offset : offset + n]
    return [Path(shutil.copy(f, dst / f.name)) for f in files]


@pytest.fixture(scope="module")
def pneumonia_run(tmp_path_factory) -> Path:
    """A simple CNN trained on a pneumonia-layout folder (NORMAL / PNEUMONIA) built from synthetic phantoms."""
    tmp = tmp_path_factory.mktemp("external")
    syn = generate(tmp / "syn", n_per_class=16, size=96, seed=0) / "images"  # 96 px: a stable 16x16 dHash
    for split, offset, n in (("train", 0, 10), ("val", 10, 6)):
        copy_class(syn / "Normal", tmp / "chest" / split / "NORMAL", n, offset)
        copy_class(syn / "Consolidation", tmp / "chest" / split / "PNEUMONIA", n, offset)
    cfg = compose_cfg(
        "train", ["data=pneumonia", f"data.root={tmp / 'chest'}", "data.carve_val=false", "trainer.max_epochs=1", *TINY]
    )
    train(cfg, tmp / "run")
    return tmp


@pytest.fixture(scope="module")
def darkcovidnet_folder(pneumonia_run: Path) -> Path:
    """A DarkCovidNet-layout folder of other phantoms: 5 Covid-19 (haze), 6 No_findings, 7 Pneumonia."""
    other = generate(pneumonia_run / "syn_other", n_per_class=8, size=32, seed=1) / "images"
    root = pneumonia_run / "dcn"
    copy_class(other / "Haze", root / "Covid-19", 5)
    copy_class(other / "Normal", root / "No_findings", 6)
    copy_class(other / "Consolidation", root / "Pneumonia", 7)
    return root


def run_eval(tmp: Path, name: str, overrides: list[str]) -> dict:
    cfg = compose_cfg("evaluate", [f"ckpt={tmp / 'run' / 'checkpoints' / 'best.ckpt'}", *NO_EXPLAIN, *overrides])
    return evaluate(cfg, tmp / name)


def test_checkpoint_keeps_hashes_of_its_training_and_validation_images(pneumonia_run):
    hashes = read_checkpoint(pneumonia_run / "run" / "checkpoints" / "best.ckpt")["image_hashes"]
    assert hashes["train"]["exact"].shape == (20,) and hashes["val"]["exact"].shape == (12,)
    assert hashes["train"]["dhash"].shape == (20, 32)
    assert len(set(hashes["train"]["exact"].tolist()) | set(hashes["val"]["exact"].tolist())) == 32


def test_external_evaluation_scores_shared_findings_and_counts_the_left_out(pneumonia_run, darkcovidnet_folder):
    result = run_eval(pneumonia_run, "ext", ["data=darkcovidnet", f"data.root={darkcovidnet_folder}", "split=all"])
    ext = result["external"]
    assert ext["trained_on"] == "pneumonia" and ext["evaluated_on"] == "darkcovidnet"
    assert ext["scored_findings"] == ["No Finding", "Pneumonia"]
    assert ext["left_out"] == {"Covid-19": 5} and ext["n_left_out"] == 5
    assert result["n"] == 13 and result["class_counts"] == {"No Finding": 6, "Pneumonia": 7}
    report = (pneumonia_run / "ext" / "report.md").read_text()
    assert "External evaluation: trained on pneumonia, evaluated on darkcovidnet" in report
    assert "| No_findings | No Finding | NORMAL | 6 |" in report
    assert "| Covid-19 | COVID-19 | left out: the model does not know it | 5 |" in report
    assert result["training_overlap"]["n_seen"] == 0


def test_no_finding_in_common_is_one_clear_error(tiny_ckpt, darkcovidnet_folder, tmp_path):
    cfg = compose_cfg(
        "evaluate",
        [f"ckpt={tiny_ckpt}", *NO_EXPLAIN, "data=darkcovidnet", f"data.root={darkcovidnet_folder}", "split=all"],
    )
    with pytest.raises(DataError, match="no finding in common") as exc:
        evaluate(cfg, tmp_path / "none")
    assert "Normal -> synthetic:Normal" in str(exc.value)  # the mapping used: phantoms are not No Finding
    assert "No_findings -> No Finding" in str(exc.value) and "shared: none" in str(exc.value)


def test_a_folder_of_training_images_is_refused(pneumonia_run, tmp_path):
    """Before: split=all on 20 of the model's own training images scored them with no warning."""
    folder = tmp_path / "seen"
    for cls in ("NORMAL", "PNEUMONIA"):
        copy_class(pneumonia_run / "chest" / "train" / cls, folder / cls, 10)
    with pytest.raises(DataError, match=r"20 of 20 evaluated images are copies .*train: 20 exact"):
        run_eval(pneumonia_run, "seen", [f"data.root={folder}", "split=all"])
    assert not (pneumonia_run / "seen" / "metrics.json").exists()
    result = run_eval(pneumonia_run, "seen", [f"data.root={folder}", "split=all", "data.allow_leakage=true"])
    assert result["training_overlap"]["n_seen"] == 20 and result["training_overlap"]["allowed"]
    assert "are copies of images the model was" in (pneumonia_run / "seen" / "report.md").read_text()


def test_near_copies_are_refused_with_near_duplicates(pneumonia_run, tmp_path):
    folder = tmp_path / "resized"
    for cls in ("NORMAL", "PNEUMONIA"):
        for f in sorted((pneumonia_run / "chest" / "val" / cls).glob("*.png"))[:3]:
            (folder / cls).mkdir(parents=True, exist_ok=True)
            Image.open(f).resize((72, 72), Image.Resampling.BILINEAR).save(folder / cls / f"{f.stem}_72px.png")
    result = run_eval(pneumonia_run, "near_off", [f"data.root={folder}", "split=all"])
    assert result["training_overlap"]["n_seen"] == 0  # not byte copies
    with pytest.raises(DataError, match=r"6 of 6 evaluated images are copies .*val: 0 exact, 6 near"):
        run_eval(pneumonia_run, "near_on", [f"data.root={folder}", "split=all", "data.near_duplicates=true"])
    assert json.loads((pneumonia_run / "near_off" / "metrics.json").read_text())["n"] == 6


@pytest.fixture(scope="module")
def nih_folder(pneumonia_run: Path) -> Path:
    """An NIH-layout folder of phantoms with metadata: No Finding, Pneumonia, Effusion (unknown to the model)."""
    other = generate(pneumonia_run / "syn_nih", n_per_class=12, size=32, seed=2) / "images"
    root = pneumonia_run / "nih"
    rows = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position"]
    for k, (label, folder) in enumerate(
        (("No Finding", "Normal"), ("Pneumonia", "Consolidation"), ("Effusion", "Haze"))
    ):
        for i, f in enumerate(sorted((other / folder).glob("*.png"))):
            name = f"{k * 100 + i:08d}_000.png"
            (root / "images").mkdir(parents=True, exist_ok=True)
            shutil.copy(f, root / "images" / name)
            rows.append(
                f"{name},{label},0,{k * 100 + i},{[8, 30, 50, 70][i % 4]},{'MF'[i % 2]},{['PA', 'AP'][i % 3 > 0]}"
            )
    (root / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")
    return root


def test_external_evaluation_on_nih_with_subgroups(pneumonia_run, nih_folder):
    overrides = ["data=nih6", f"data.root={nih_folder}", "split=all", "subgroups.min_n=5"]
    result = run_eval(pneumonia_run, "nih", overrides)
    assert result["external"]["left_out"] == {"Effusion": 12}
    assert result["class_counts"] == {"No Finding": 12, "Pneumonia": 12}
    frame = pd.read_csv(pneumonia_run / "nih" / "subgroups.csv")
    assert set(frame["attribute"]) == {"age", "sex", "view"} and set(frame["class"]) == {"Pneumonia"}
    assert frame.loc[frame["group"] == "0-17", "n"].item() == 6
    assert (pneumonia_run / "nih" / "subgroups.png").is_file()
    report = (pneumonia_run / "nih" / "report.md").read_text()
    assert "## Subgroups" in report and "Largest gap between groups" in report


def test_command_line_refusals_are_one_line_exit_2_and_leave_no_run_folder(
    pneumonia_run, tiny_ckpt, darkcovidnet_folder, tmp_path, monkeypatch, capsys
):
    """No finding in common, a folder of training images, an audit option out of range: evaluate and audit stop
    with one line and exit 2, and the run folder they were given is not left behind."""
    seen = tmp_path / "seen"
    for cls in ("NORMAL", "PNEUMONIA"):
        copy_class(pneumonia_run / "chest" / "train" / cls, seen / cls, 3)
    ckpt = pneumonia_run / "run" / "checkpoints" / "best.ckpt"
    fast = ["bootstrap.resamples=50"]
    cases = [
        (
            evaluate_cmd.main,
            [f"ckpt={tiny_ckpt}", "data=darkcovidnet", f"data.root={darkcovidnet_folder}", "split=all"],
            "have no finding in common",
        ),
        (
            evaluate_cmd.main,
            [f"ckpt={ckpt}", f"data.root={seen}", "split=all", "explain.n=0"],
            "6 of 6 evaluated images are copies",
        ),
        (audit_cmd.main, [f"ckpt={ckpt}", f"data.root={seen}", "split=all"], "6 of 6 evaluated images are copies"),
        (evaluate_cmd.main, [f"ckpt={ckpt}", "audit.center=1.5"], "audit.center=1.5 must be in (0, 1)"),
        (audit_cmd.main, [f"ckpt={ckpt}", "audit=false"], "audit=false switches the audit off"),
    ]
    out = tmp_path / "out"
    for command, args, expected in cases:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            run_cli(command, [*args, *fast, f"hydra.run.dir={out}"], monkeypatch)
        errors = [line for line in "".join(capsys.readouterr()).splitlines() if "ERROR" in line]
        assert exc.value.code == 2 and len(errors) == 1 and expected in errors[0], (args, errors)
        assert not out.exists(), f"{command.__name__} {args} left {sorted(out.rglob('*'))}"
