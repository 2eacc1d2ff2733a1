"""Reading checkpoints: what is not a checkpoint says so, in one line, before any unpickling."""

from __future__ import annotations

import argparse

import pytest
import torch

from lungnet.checkpoint import CheckpointError, read_checkpoint
from tests.test_inference import make_checkpoint


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
