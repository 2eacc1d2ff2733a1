"""evaluate.py ckpt=[a,b]: the ensemble reported like one model, against each member, and its refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lungnet.artifacts.ensemble import open_ensemble
from lungnet.commands import evaluate as evaluate_cmd
from lungnet.data.preprocessing import logits_to_probs
from lungnet.errors import ConfigError
from lungnet.evaluation.ensemble import check_split
from lungnet.evaluation.pipeline import evaluate
from lungnet.serve.inference import Predictor
from tests.conftest import run_cli
from tests.evaluation.conftest import FAST_EVAL, compose_cfg
from tests.evaluation.test_compare import _variant
from tests.evaluation.test_pipeline import FILES
from tests.scoring.test_plots import assert_png


def _member(src: Path, root: Path, name: str, noise: float = 0.0, **data) -> Path:
    """A finished run directory ``root/name`` (metrics.json) holding a (perturbed) copy of ``src`` with ``data``
    changed in its config."""
    dst = _variant(src, root / name / "checkpoints" / "best.ckpt", noise=noise)
    (root / name / "metrics.json").write_text("{}")
    if data:
        ckpt = torch.load(dst, weights_only=True)
        ckpt["hyper_parameters"]["data"].update(data)
        ckpt["hyper_parameters"].get("extra", {}).pop("splits", None)  # recomputed splits are not verified
        torch.save(ckpt, dst)
    return dst


@pytest.fixture(scope="module")
def members(tiny_ckpt, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("members")
    _member(tiny_ckpt, root, "a")
    _member(tiny_ckpt, root, "b", noise=0.05)
    return root


@pytest.fixture(scope="module")
def evaluated(members, tmp_path_factory):
    out = tmp_path_factory.mktemp("ens_eval")
    fast = [o for o in FAST_EVAL if o != "audit=false"]  # the audit step on: an ensemble must get past it
    cfg = compose_cfg("evaluate", [f"ckpt={members}", "split=val", "explain.n=0", *fast])
    return evaluate(cfg, out), out


def _member_probs(ckpt: Path, files: list[str], labels: list[str]) -> np.ndarray:
    rows = Predictor(ckpt, decision="none").predict(files)
    return np.array([[row[f"p_{lab}"] for lab in labels] for row in rows])


def test_reported_like_one_model_with_members_compared(evaluated):
    result, out = evaluated
    for name in (*FILES, "ensemble.json", "ensemble.decision.json", "ensemble_vs_members.png", "splits/val.csv"):
        assert (out / name).is_file(), name
    assert_png(out / "ensemble_vs_members.png")
    block = json.loads((out / "metrics.json").read_text())["ensemble"]
    assert [m["name"] for m in block["members"]] == ["a", "b"] and not block["cross_validation"]
    for member in block["members"]:
        for key in ("accuracy", "auroc_macro"):
            d = member["vs_ensemble"][key]
            assert d["a"] == pytest.approx(result[key]) and d["diff"] == pytest.approx(d["a"] - d["b"])
            assert d["lo"] <= d["diff"] <= d["hi"]
    report = (out / "report.md").read_text()
    assert "## Ensemble vs its members" in report and "](ensemble_vs_members.png)" in report
    assert "Not run for an ensemble: evaluate each member for its audit" in report
    assert result["model"].startswith("ensemble of 2")


def test_probabilities_are_the_mean_of_the_members(evaluated, members):
    """predictions.csv holds the decision probabilities: the members' mean, then the ensemble's own temperature."""
    result, out = evaluated
    preds = pd.read_csv(out / "predictions.csv").head(8)
    labels = result["labels"]
    files = preds["path"].tolist()
    pa, pb = (_member_probs(members / name / "checkpoints/best.ckpt", files, labels) for name in ("a", "b"))
    temperature = result["calibration"]["temperature"]
    expected = logits_to_probs(np.log((pa + pb) / 2) / temperature, False)
    np.testing.assert_allclose(preds[[f"p_{lab}" for lab in labels]].to_numpy(), expected, atol=1e-4)
    assert not np.allclose(pa, pb, atol=1e-3)  # two different members: their mean is neither of them


def test_manifest_runs_with_the_ensemble_decision_file(evaluated):
    result, out = evaluated
    predictor = Predictor(out / "ensemble.json")
    assert predictor.kind == "ensemble" and predictor.members == ["a", "b"]
    assert predictor.decision_file.endswith("ensemble.decision.json")
    assert predictor.decision.temperature == pytest.approx(result["calibration"]["temperature"])
    row = predictor.predict([pd.read_csv(out / "predictions.csv")["path"].iloc[0]])[0]
    assert row["decision"] and not row["error"]


def test_refuses_a_member_holding_other_images_before_writing(members, tiny_ckpt, tmp_path, monkeypatch, capfd):
    other = _member(tiny_ckpt, tmp_path, "c", val_fraction=0.4)
    out = tmp_path / "run"
    args = [f"ckpt=[{members / 'a/checkpoints/best.ckpt'},{other}]", "split=val", f"hydra.run.dir={out}"]
    with pytest.raises(SystemExit) as exit_:
        run_cli(evaluate_cmd.main, args, monkeypatch)
    assert exit_.value.code == 2
    captured = capfd.readouterr()
    (line,) = [x for x in (captured.out + captured.err).splitlines() if "ERROR" in x]
    assert "Ensemble members a and c hold different val splits (val_fraction 0.15 vs 0.4" in line
    assert not out.exists() or not any(p.name != ".hydra" for p in out.iterdir())


def test_folds_are_refused_on_val(tiny_ckpt, tmp_path):
    folds = [_member(tiny_ckpt, tmp_path, str(k), cv_folds=3, cv_fold=k) for k in range(2)]
    ens = open_ensemble([str(f) for f in folds])
    assert ens.is_cross_validation
    with pytest.raises(ConfigError, match="split=val of an ensemble of cross-validation folds"):
        check_split(ens, "val", "auto")
    with pytest.raises(ConfigError, match="operating_point.fit_on=train"):
        check_split(ens, "test", "train")
    check_split(ens, "test", "auto")
    shutil.rmtree(tmp_path)
