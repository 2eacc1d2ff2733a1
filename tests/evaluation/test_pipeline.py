"""evaluate(): a tiny checkpoint -> metrics, predictions, operating point, calibration, figures and report."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lungnet.evaluation.pipeline import evaluate
from lungnet.evaluation.report import EXTRA_MARKER, add_report_sections
from tests.conftest import ROOT
from tests.evaluation.conftest import FAST_EVAL, compose_cfg
from tests.scoring.test_plots import assert_png

FIGURES = ("confusion_matrix.png", "roc.png", "pr.png", "reliability.png", "risk_coverage.png")
FILES = ("metrics.json", "predictions.csv", "per_class.csv", "thresholds.json", "report.md", "report.html")
FILES = (*FILES, "model_card.md", *FIGURES)


@pytest.fixture(scope="module")
def evaluated(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_test")
    cfg = compose_cfg(
        "evaluate", [f"ckpt={tiny_ckpt}", "split=test", "operating_point.target_sensitivity=0.9", *FAST_EVAL]
    )
    return evaluate(cfg, out), out


def test_writes_every_artefact(evaluated):
    result, out = evaluated
    for name in FILES:
        assert (out / name).is_file(), name
    for name in FIGURES:
        assert_png(out / name)
    assert result["figures"] == {
        "confusion_matrix": FIGURES[0],
        "roc": FIGURES[1],
        "pr": FIGURES[2],
        "reliability": FIGURES[3],
        "risk_coverage": FIGURES[4],
    }


def test_metrics_json_is_consistent_with_predictions(evaluated):
    result, out = evaluated
    metrics = json.loads((out / "metrics.json").read_text())
    preds = pd.read_csv(out / "predictions.csv")
    assert metrics["n"] == len(preds) > 0
    assert metrics["accuracy"] == pytest.approx(preds["correct"].mean())
    for key in ("accuracy", "f1_macro", "auroc_macro"):
        ci = metrics["confidence_intervals"][key]
        assert ci["lo"] <= metrics[key] <= ci["hi"] and ci["value"] == pytest.approx(metrics[key])
    per_class = pd.read_csv(out / "per_class.csv")
    assert per_class["class"].tolist() == metrics["labels"]
    assert {"precision", "sensitivity", "specificity", "f1", "auroc"} <= set(per_class.columns)
    assert metrics["bootstrap"]["unit"] == "image" and metrics["bootstrap"]["n_units"] == metrics["n"]  # no patients
    assert "percentile bootstrap over images" in (out / "report.md").read_text()
    cal = metrics["calibration"]
    assert 0 <= cal["ece"] <= 1 and 0 <= cal["ece_after"] <= 1 and cal["temperature"] > 0


def test_operating_point_is_fitted_on_val_and_applied_to_test(evaluated):
    result, out = evaluated
    op = result["operating_point"]
    assert op["fit_split"] == "val" and op["target_sensitivity"] == 0.9
    assert set(op["thresholds"]) == set(result["labels"])
    for lab, fitted in op["fitted"].items():
        if fitted["positives"]:
            assert fitted["sensitivity"] >= 0.9, lab  # reached on the data it was fitted on
    preds = pd.read_csv(out / "predictions.csv")
    saved = json.loads((out / "thresholds.json").read_text())["thresholds"]
    for lab, thr in saved.items():
        if thr is not None:
            assert preds[f"op_{lab}"].tolist() == (preds[f"p_{lab}"] >= thr - 1e-6).tolist()
            positives = preds["true"] == lab
            if positives.any():
                sens = preds.loc[positives, f"op_{lab}"].mean()
                assert op["applied"][lab]["sensitivity"] == pytest.approx(sens)


def test_report_opens_with_the_summary_table(evaluated):
    _, out = evaluated
    text = (out / "report.md").read_text()
    lines = text.splitlines()
    assert lines[0].startswith("# Evaluation: simple_cnn on synthetic (test split)")
    summary = text.index("## Summary")
    assert summary < text.index("## Per-class metrics") < text.index("## Confusion matrix")
    for row in (
        "| Model |",
        "| Data |",
        "| Split evaluated | test |",
        "| Images (n) |",
        "| Accuracy [95% CI] |",
        "| Macro F1 [95% CI] |",
        "| Macro AUROC [95% CI] |",
        "| Expected calibration error |",
        "| Operating point |",
    ):
        assert row in text[summary : text.index("## Per-class")], row
    for fig in FIGURES:
        assert f"]({fig})" in text
    assert "fitted on val" in text and EXTRA_MARKER in text
    html = (out / "report.html").read_text()
    # the figures plus the Grad-CAM grid of the explanation section (evaluate.yaml: explain=gradcam by default)
    assert "Explanations: Grad-CAM" in text and "explanations/gradcam/grid.png" in text
    assert html.count("data:image/png;base64,") == len(FIGURES) + 1 and "<table>" in html


def test_explanation_sections_can_be_added_later(evaluated, tmp_path):
    _, out = evaluated
    (tmp_path / "report.md").write_text((out / "report.md").read_text())
    (tmp_path / "roc.png").write_bytes((out / "roc.png").read_bytes())
    add_report_sections(tmp_path, ["## Explanations\n\nGrad-CAM maps.\n\n![cam](roc.png)"])
    text = (tmp_path / "report.md").read_text()
    assert text.index("## Explanations") < text.index(EXTRA_MARKER) < text.index("## Files")
    assert "Grad-CAM maps." in (tmp_path / "report.html").read_text()


def test_evaluate_script_on_val_then_reuse_its_thresholds(tiny_ckpt, tmp_path):
    """``python evaluate.py ckpt=... split=val`` end to end, with one positive class; then apply its thresholds."""
    (tmp_path / "checkpoints").mkdir()  # split=val writes the decision file beside the checkpoint: not the shared run's
    ckpt = Path(shutil.copy(tiny_ckpt, tmp_path / "checkpoints" / "best.ckpt"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = [
        *(sys.executable, str(ROOT / "evaluate.py"), f"ckpt={ckpt}", "split=val"),
        *(f"hydra.run.dir={tmp_path / 'v'}", "operating_point.positive_class=Cavity", *FAST_EVAL),
    ]
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "v"
    for name in FILES:
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "val" and metrics["operating_point"]["fit_split"] == "val"
    assert list(metrics["operating_point"]["thresholds"]) == ["Cavity"]
    assert "evaluated split itself" in (out / "report.md").read_text()
    cfg = compose_cfg(
        "evaluate",
        [
            f"ckpt={ckpt}",
            "split=test",
            f"operating_point.file={out / 'thresholds.json'}",
            "report.figures=false",
            "bootstrap.resamples=20",
        ],
    )
    again = evaluate(cfg, tmp_path / "t")
    assert again["operating_point"]["thresholds"] == metrics["operating_point"]["thresholds"]
    assert again["operating_point"]["source"] == "file"


def test_unknown_positive_class_is_a_clear_error(tiny_ckpt, tmp_path):
    cfg = compose_cfg("evaluate", [f"ckpt={tiny_ckpt}", "operating_point.positive_class=Flu", "report.figures=false"])
    with pytest.raises(ValueError, match="Flu"):
        evaluate(cfg, tmp_path)


def test_multilabel_checkpoint_gets_per_finding_roc_and_intervals(tiny_nih, tmp_path):
    from lungnet.train.training import train
    from tests.evaluation.conftest import TINY

    train_cfg = compose_cfg("train", ["data=nih14", f"data.root={tiny_nih}", "trainer.max_epochs=1", *TINY])
    train(train_cfg, tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    cfg = compose_cfg("evaluate", [f"ckpt={ckpt}", "split=test", "bootstrap.resamples=50", "report.html=false"])
    result = evaluate(cfg, tmp_path / "eval")
    assert result["multilabel"] and "accuracy" not in result
    assert not (tmp_path / "eval" / "confusion_matrix.png").exists()
    for name in ("roc.png", "pr.png", "reliability.png"):
        assert_png(tmp_path / "eval" / name)
    present = [lab for lab, m in result["per_class"].items() if m["auroc"] is not None and m["auroc"] == m["auroc"]]
    assert present, "the tiny NIH test split should hold some findings with positives and negatives"
    for lab in present:
        ci = result["confidence_intervals"][f"auroc/{lab}"]
        assert ci["lo"] <= result["per_class"][lab]["auroc"] <= ci["hi"]
        assert {"sensitivity", "specificity", "precision"} <= set(result["per_class"][lab])
    text = (tmp_path / "eval" / "report.md").read_text()
    assert "## Per-finding metrics" in text and "AUROC [95% CI]" in text and "Accuracy" not in text
    # NIH names each film's patient: the intervals resample whole patients (3 films each), and say so
    split = pd.read_csv(tmp_path / "eval" / "splits" / "test.csv")
    patients, images = split["patient"].nunique(), len(split)
    assert images == result["n"] == 3 * patients
    boot = json.loads((tmp_path / "eval" / "metrics.json").read_text())["bootstrap"]
    assert {k: boot[k] for k in ("unit", "n_units", "n_images", "n_resamples")} == {
        "unit": "patient",
        "n_units": patients,
        "n_images": images,
        "n_resamples": 50,
    }
    assert f"bootstrap over patients ({patients} patients, {images} images" in text
    audited = result["audit"]["bootstrap"]  # the shortcut audit's intervals too (its subsample: every test image here)
    assert (audited["unit"], audited["n_images"]) == ("patient", result["audit"]["n"])


def test_scoring_with_loader_workers_gives_the_same_predictions(tiny_ckpt, tmp_path, monkeypatch):
    """Issue #27 §4: data.num_workers=2 scores the split and the val split the operating point is fitted on in a
    DataLoader with 2 workers, and writes the predictions and metrics of the run without workers."""
    from lungnet.data.datamodule import LungDataModule

    workers, loader = [], LungDataModule.loader

    def counting(self, split, *args, **kw):
        made = loader(self, split, *args, **kw)
        workers.append((split, made.num_workers))
        return made

    monkeypatch.setattr(LungDataModule, "loader", counting)
    fast = [f"ckpt={tiny_ckpt}", "split=test", *FAST_EVAL, "explain.n=0", "report.figures=false"]
    fast.append("decision.write=false")  # nothing written beside the shared checkpoint
    out, preds = {}, {}
    for n in (0, 2):
        out[n] = evaluate(compose_cfg("evaluate", [*fast, f"data.num_workers={n}"]), tmp_path / f"w{n}")
        preds[n] = pd.read_csv(tmp_path / f"w{n}" / "predictions.csv")
    assert workers == [("test", 0), ("val", 0), ("test", 2), ("val", 2)]
    assert len(preds[0]) == out[0]["n"] > 0
    pd.testing.assert_frame_equal(preds[2], preds[0], check_exact=True)
    assert (out[2]["accuracy"], out[2]["auroc_macro"]) == (out[0]["accuracy"], out[0]["auroc_macro"])
