"""Reading checkpoints: what is not a checkpoint says so, in one line, before any unpickling."""

from __future__ import annotations

import argparse

import pytest
import torch

from lungnet.artifacts.checkpoint import (
    CheckpointError,
    checkpoints_below,
    no_run_message,
    read_checkpoint,
    training_runs,
)
from tests.serve.test_inference import make_checkpoint


def _refusal(path) -> str:
    with pytest.raises(CheckpointError) as exc:
        read_checkpoint(path)
    message = str(exc.value)
    assert "\n" not in message and str(path) in message
    return message


def test_files_that_are_not_checkpoints_are_named_as_such(tmp_path):
    text = tmp_path / "notes.ckpt"
    text.write_text("hello wor\n")  # 10 bytes of text: not "pickled Python objects"
    message = _refusal(text)
    assert "is not a checkpoint" in message and "pickled" not in message
    (tmp_path / "empty.ckpt").write_bytes(b"")
    assert "is not a checkpoint (an empty file" in _refusal(tmp_path / "empty.ckpt")
    good = make_checkpoint(tmp_path / "good.ckpt")
    torn = tmp_path / "torn.ckpt"
    torn.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert "corrupt or truncated" in _refusal(torn)
    assert read_checkpoint(good)["hyper_parameters"]["labels"]


def test_pickled_objects_are_refused_in_one_line(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"spec": argparse.Namespace(x=1)}}, path)
    message = _refusal(path)
    assert "holds pickled Python objects" in message and "argparse.Namespace" in message


def _run(root, name: str, finished: bool, ckpt: str = "best.ckpt"):
    """A training run directory: a checkpoint, and metrics.json (written last) when ``finished``."""
    (root / name / "checkpoints").mkdir(parents=True)
    (root / name / "checkpoints" / ckpt).write_bytes(b"x")
    if finished:
        (root / name / "metrics.json").write_text("{}")
    return root / name


def test_unfinished_runs_in_a_directory_of_runs_are_skipped_and_named(tmp_path, caplog):
    """A sweep trial killed after its first best.ckpt (no metrics.json) is no model anyone reported on."""
    done = [_run(tmp_path, name, True) for name in ("0", "2", "10")]
    killed = [_run(tmp_path, "1", False), _run(tmp_path, "3", False, ckpt="last.ckpt")]  # select=last: no best yet
    assert training_runs(tmp_path) == (done, killed)
    assert checkpoints_below(tmp_path) == ([r / "checkpoints" / "best.ckpt" for r in done], killed)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "Skipping 2 unfinished" in warning and str(killed[0]) in warning and str(killed[1]) in warning
    assert training_runs(done[0]) == ([done[0]], [])  # a run directory itself: that run
    assert training_runs(killed[0]) == ([], [killed[0]])
    message = no_run_message(killed[0], [killed[0]])
    assert "without any finished training run (1 unfinished" in message and "name its checkpoint file" in message
    assert "without any training run" in no_run_message(tmp_path / "empty", [])
