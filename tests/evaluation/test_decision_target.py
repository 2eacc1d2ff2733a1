"""Where evaluate.py writes the decision file (beside the checkpoint, or decision.out), checked before any work.

Tests run as root, where a folder without write bits still takes files: the read-only model folder is simulated at
the probe (`lungnet.io.check_writable`, tested on real folders in tests/test_io.py); a decision.out under a file is
a real refusal.
"""

from __future__ import annotations

import errno
import os
import shutil

import pytest

from lungnet.artifacts.paths import card_path
from lungnet.commands import evaluate as evaluate_cmd
from lungnet.errors import WriteError
from lungnet.evaluation import decision_target
from lungnet.evaluation import pipeline as evaluation_run
from lungnet.evaluation.pipeline import evaluate
from lungnet.io import check_writable
from lungnet.serve.inference import Predictor
from tests.conftest import run_cli
from tests.evaluation.conftest import FAST_EVAL, compose_cfg

QUICK = ["explain.n=0", "report.figures=false", "report.html=false", "subgroups=false", *FAST_EVAL]


@pytest.fixture
def models(tiny_run, tmp_path, monkeypatch):
    """A copy of the tiny checkpoint alone in ``models/``, a folder the probe reports read-only, and the model
    never run (a refusal must come before any work)."""
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(tiny_run / "checkpoints" / "best.ckpt", folder / "best.ckpt")

    def probe(where):
        if os.path.abspath(where) == str(folder):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(where))
        check_writable(where)

    monkeypatch.setattr(decision_target, "check_writable", probe)
    return folder / "best.ckpt"


def no_model_run(monkeypatch):
    def ran(*args, **kwargs):
        raise AssertionError("the model ran before the decision file's folder was checked")

    monkeypatch.setattr(evaluation_run, "model_outputs", ran)


def test_a_read_only_checkpoint_folder_is_one_line_before_any_work(models, tmp_path, monkeypatch, capsys):
    no_model_run(monkeypatch)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        run_cli(evaluate_cmd.main, [f"ckpt={models}", "split=val", *QUICK, f"hydra.run.dir={run}"], monkeypatch)
    assert exc.value.code == 2
    (message,) = [line for line in "".join(capsys.readouterr()).splitlines() if "[ERROR]" in line]
    assert f"WriteError: Cannot write {models.parent} (the checkpoint's folder)" in message
    assert "decision.out=<writable folder>/<name>.decision.json" in message and "hydra.run.dir" not in message
    assert not (run / "metrics.json").exists()


def test_decision_out_under_a_file_is_refused_before_any_work(tiny_run, tmp_path, monkeypatch):
    no_model_run(monkeypatch)
    (tmp_path / "a-file").write_text("x")
    out = tmp_path / "a-file" / "best.decision.json"
    ckpt = tiny_run / "checkpoints" / "best.ckpt"
    cfg = compose_cfg("evaluate", [f"ckpt={ckpt}", "split=val", f"decision.out={out}"])
    with pytest.raises(WriteError, match=r"a-file \(decision.out\): .*decision.out=<writable folder>"):
        evaluate(cfg, tmp_path / "run")


def test_decision_out_takes_the_file_and_card_and_predict_reads_it(models, tmp_path):
    out = tmp_path / "kept" / "mine.decision.json"
    result = evaluate(compose_cfg("evaluate", [f"ckpt={models}", "split=val", f"decision.out={out}", *QUICK]), tmp_path)
    assert result["decisions"]["file"] == str(out) and out.is_file() and card_path(out).is_file()
    assert sorted(p.name for p in models.parent.iterdir()) == ["best.ckpt"]  # nothing beside the checkpoint
    predictor = Predictor(models, decision=str(out))  # pinned to the checkpoint by hash, wherever it lies
    assert predictor.decision.split == "val" and card_path(out).read_text().startswith("# ")
    again = evaluate(compose_cfg("evaluate", [f"ckpt={models}", "split=test", f"decision.out={out}", *QUICK]), tmp_path)
    assert again["decisions"]["source"].startswith(f"read from `{out}`") and "file" not in again["decisions"]


def test_a_read_only_folder_with_its_fitted_file_still_evaluates_test(models, tmp_path):
    """Only a write is checked: a fitted decision file beside the checkpoint is read, the folder never written."""
    out = tmp_path / "kept" / "best.decision.json"
    evaluate(compose_cfg("evaluate", [f"ckpt={models}", "split=val", f"decision.out={out}", *QUICK]), tmp_path)
    shutil.copy(out, models.parent / out.name)  # as a read-only model folder is shipped: checkpoint + decision file
    result = evaluate(compose_cfg("evaluate", [f"ckpt={models}", "split=test", *QUICK]), tmp_path / "test")
    assert result["decisions"]["source"].startswith("read from") and (tmp_path / "test" / "metrics.json").is_file()


@pytest.mark.parametrize(
    ("decision", "card"),
    [
        ("run/best.decision.json", "run/best.model_card.md"),
        ("run/ensemble.decision.json", "run/ensemble.model_card.md"),
        ("kept/mine.json", "kept/mine.model_card.md"),
        ("kept/plain", "kept/plain.model_card.md"),
    ],
)
def test_card_path_sits_beside_the_decision_file(decision, card):
    assert str(card_path(decision)) == card
