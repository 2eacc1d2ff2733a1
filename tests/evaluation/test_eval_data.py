"""The data an evaluation scores: a checkpoint's data config is read, never a licence to write."""

from __future__ import annotations

import pytest
import torch

from lungnet.checkpoint import load_model
from lungnet.data.sources import DataError
from lungnet.evaluation.eval_data import build_eval_data
from tests.test_inference import make_checkpoint


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
