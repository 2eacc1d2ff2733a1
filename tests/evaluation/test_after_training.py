"""Training leaves the checkpoint ready for predict.py and the app (issue #28 §2, §6; #27 §3): the decision file
``evaluate.py split=val`` writes, an OOD gate fitted on a bounded seeded sample, a progress bar over the steps."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from lungnet.artifacts.decision import DecisionRecord
from lungnet.artifacts.paths import decision_path
from lungnet.evaluation.after_training import STEPS
from lungnet.evaluation.pipeline import evaluate
from lungnet.serve.app import create_app
from lungnet.serve.inference import Predictor
from lungnet.train.training import train
from tests.evaluation.conftest import TINY, compose_cfg
from tests.serve.test_app import app_options

FIT_MAX = 10


@pytest.fixture(scope="module")
def bounded_run(tmp_path_factory) -> tuple[Path, str]:
    """A 1-epoch run with ``ood.fit_max=10`` and the progress bar on; its run directory and what it wrote to
    stderr."""
    tmp = tmp_path_factory.mktemp("bounded")
    shown = [a for a in TINY if a != "trainer.enable_progress_bar=false"]
    overrides = [f"data.root={tmp / 'syn'}", "data.options.n_per_class=8", "data.options.size=32", *shown]
    cfg = compose_cfg("train", [*overrides, "trainer.max_epochs=1", f"ood.fit_max={FIT_MAX}"])
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        train(cfg, tmp / "run")
    return tmp / "run", err.getvalue()


def test_the_ood_gate_fits_on_a_bounded_sample_and_the_file_says_how_many(bounded_run):
    run, _ = bounded_run
    record = DecisionRecord.from_dict(json.loads((run / "checkpoints" / "best.decision.json").read_text()))
    assert len(pd.read_csv(run / "splits" / "train.csv")) > FIT_MAX  # the cap applies
    assert record.ood_fit_n == FIT_MAX and record.ood.features.info["fit_n"] == FIT_MAX


def test_the_progress_bar_names_each_step_after_training(bounded_run):
    _, err = bounded_run
    for position, name in enumerate(STEPS, start=1):
        assert f"After training [{position}/{len(STEPS)}]: {name}" in err, name
    assert "After training: done" in err


def test_the_app_shows_the_validation_summary_after_training_alone(bounded_run):
    """No evaluate.py: the app's header has the validation numbers and calibrated probabilities."""
    run, _ = bounded_run
    ckpt = run / "checkpoints" / "best.ckpt"
    with TestClient(create_app(Predictor(ckpt), **app_options(explain=None))) as client:
        info = client.get("/model").json()
        assert info["summary"]["split"] == "val" and info["summary"]["accuracy"]["value"] >= 0
        assert info["summary_missing"] is None and info["decision"]["temperature"] > 0
        assert info["model_card"].startswith("# Model card")
        image = next((run.parent / "syn").rglob("*.png"))
        answer = client.post("/predict", files={"file": ("x.png", image.read_bytes())}).json()
    assert answer["calibrated"] is True and answer["decision_split"] == "val"


def test_training_writes_what_evaluate_split_val_writes(tiny_run, tmp_path):
    """The same checkpoint evaluated with evaluate.py split=val (its OOD gate refitted too): the same record."""
    ckpt = tmp_path / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir()
    shutil.copy(tiny_run / "checkpoints" / "best.ckpt", ckpt)
    trained = json.loads((tiny_run / "checkpoints" / "best.decision.json").read_text())
    quick = ["explain.n=0", "audit=false", "report.figures=false"]  # none of them is in the decision file
    quick.append(next(o for o in TINY if o.startswith("bootstrap.")))  # training's, for the summary's intervals
    evaluate(compose_cfg("evaluate", [f"ckpt={ckpt}", "split=val", "ood.refit=true", *quick]), tmp_path / "e")
    evaluated = json.loads(decision_path(ckpt).read_text())
    assert set(trained) == set(evaluated) and trained["split"] == "val" and trained["summary"]
    for key in ("temperature", "conformal_scores", "thresholds", "counts", "summary", "ood", "ood_fit_n"):
        assert trained[key] == evaluated[key], key
    assert (tiny_run / "checkpoints" / "best.model_card.md").is_file()
