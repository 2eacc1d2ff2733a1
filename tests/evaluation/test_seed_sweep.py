"""data.split_seed apart from the training seed (issue #28 §1): a seed sweep shares its split, so it is compared and
ensembled as it is; models split differently are refused in one line before any model runs; a checkpoint made
before data.split_seed existed is split by its seed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from lungnet.artifacts.checkpoint import load_model
from lungnet.commands import compare as compare_cmd
from lungnet.commands import evaluate as evaluate_cmd
from lungnet.data.datamodule import LungDataModule
from lungnet.data.sources import DataError
from lungnet.data.splits import split_fingerprint
from lungnet.evaluation.compare import compare
from lungnet.evaluation.eval_data import build_eval_data
from lungnet.evaluation.pipeline import evaluate
from lungnet.train.training import train
from tests.conftest import compose_cfg, run_cli
from tests.evaluation.conftest import FAST_EVAL, TINY


@pytest.fixture(scope="module")
def sweep(tiny_run, tmp_path_factory) -> Path:
    """A multirun of two real trainings of the default data.split_seed: the shared tiny run (seed 42) and one of
    seed=1 (1 epoch) on the same data; and beside it ``split2``, the seed=1 run's checkpoint as data.split_seed=2
    would have made it (its data config and split fingerprint; its weights do not matter: no model runs)."""
    tmp = tmp_path_factory.mktemp("sweep")
    shutil.copytree(tiny_run, tmp / "multirun" / "0_seed42")
    data = [f"data.root={tiny_run.parent / 'syn'}", "data.options.n_per_class=10", "data.options.size=32"]
    train(compose_cfg("train", [*data, "seed=1", "trainer.max_epochs=1", *TINY]), tmp / "multirun" / "1_seed1")
    ckpt = torch.load(_ckpt(tmp / "multirun" / "1_seed1"), weights_only=True)
    hp = ckpt["hyper_parameters"]
    hp["data"]["split_seed"] = 2
    dm = LungDataModule(hp["data"], load_model(_ckpt(tiny_run)).spec)
    hp["extra"]["splits"] = split_fingerprint(dm.load_table())
    (tmp / "split2" / "checkpoints").mkdir(parents=True)
    torch.save(ckpt, _ckpt(tmp / "split2"))
    return tmp


def _ckpt(run: Path) -> Path:
    return run / "checkpoints" / "best.ckpt"


def test_a_seed_sweep_shares_its_split_and_not_its_weights(sweep):
    a, b = sweep / "multirun" / "0_seed42", sweep / "multirun" / "1_seed1"
    for split in ("train", "val", "test"):
        assert (a / "splits" / f"{split}.csv").read_bytes() == (b / "splits" / f"{split}.csv").read_bytes()
    wa, wb = (torch.load(_ckpt(r), weights_only=True)["state_dict"] for r in (a, b))
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)
    loaded = load_model(_ckpt(b))
    assert (loaded.seed, loaded.split_seed) == (1, 42)
    moved = load_model(_ckpt(sweep / "split2")).hparams["extra"]["splits"]
    assert moved["val"] != loaded.hparams["extra"]["splits"]["val"]  # data.split_seed moves the split


def test_a_seed_sweep_is_compared_and_ensembled(sweep, tmp_path):
    fast = ["bootstrap.resamples=50", "report.html=false", "report.figures=false", "explain.n=0"]
    cfg = compose_cfg("compare", [f"runs={sweep / 'multirun'}", "split=val", *FAST_EVAL, *fast])
    frame = compare(cfg, tmp_path / "compare")
    assert frame["model"].tolist() == ["0_seed42", "1_seed1"] and (frame["n"] == frame["n"].iloc[0]).all()
    ens = compose_cfg("evaluate", [f"ckpt={sweep / 'multirun'}", "split=val", *FAST_EVAL, *fast])
    result = evaluate(ens, tmp_path / "ensemble")
    assert result["model"].startswith("ensemble of 2") and result["n"] == frame["n"].iloc[0]
    assert [m["seed"] for m in result["ensemble"]["members"]] == [42, 1]


def _refused(command, args: list[str], out: Path, monkeypatch, capfd) -> str:
    """Runs ``command`` expecting exit 2 with one ERROR line, nothing in ``out``; returns the line."""
    with pytest.raises(SystemExit) as exit_:
        run_cli(command, [*args, f"hydra.run.dir={out}"], monkeypatch)
    assert exit_.value.code == 2
    captured = capfd.readouterr()
    (line,) = [x for x in (captured.out + captured.err).splitlines() if "ERROR" in x]
    assert not out.exists() or not any(p.name != ".hydra" for p in out.iterdir())
    return line


def test_other_split_seeds_are_refused_before_any_model_runs(sweep, tmp_path, monkeypatch, capfd):
    def never(*args, **kwargs):
        raise AssertionError("a model ran before the splits were checked")

    monkeypatch.setattr("lungnet.evaluation.compare.evaluate_with_predictions", never)
    monkeypatch.setattr("lungnet.evaluation.pipeline.build_eval_data", never)
    runs = f"[{_ckpt(sweep / 'multirun' / '1_seed1')},{_ckpt(sweep / 'split2')}]"
    line = _refused(compare_cmd.main, [f"runs={runs}", "split=val"], tmp_path / "c", monkeypatch, capfd)
    assert "runs 1_seed1 and split2 hold different val splits (split_seed 42 vs 2): train them with the same " in line
    assert "allow_different_images=true" in line
    line = _refused(evaluate_cmd.main, [f"ckpt={runs}", "split=test"], tmp_path / "e", monkeypatch, capfd)
    assert "Ensemble members 1_seed1 and split2 hold different test splits (split_seed 42 vs 2)" in line


def _as_old(src: Path, dst: Path, seed: int) -> Path:
    """A copy of checkpoint ``src`` as lungnet wrote it before data.split_seed: no split_seed, ``extra.seed``."""
    ckpt = torch.load(src, weights_only=True)
    del ckpt["hyper_parameters"]["data"]["split_seed"]
    ckpt["hyper_parameters"]["extra"]["seed"] = seed
    torch.save(ckpt, dst)
    return dst


def test_a_checkpoint_older_than_split_seed_is_split_by_its_seed(tiny_run, tmp_path):
    """tiny_run was split with 42: as an old checkpoint of seed 42 its recorded splits are recomputed; as one of
    seed 7, evaluate splits by 7 and its recorded fingerprint refuses the other split."""
    ckpt = _ckpt(tiny_run)
    old = load_model(_as_old(ckpt, tmp_path / "old42.ckpt", 42))
    dm = build_eval_data(old, {}, "val", tmp_path / "a")
    assert sorted(dm.table.loc[dm.table["split"] == "val", "path"]) == sorted(
        pd.read_csv(tiny_run / "splits" / "val.csv")["path"]
    )
    other = load_model(_as_old(ckpt, tmp_path / "old7.ckpt", 7))
    with pytest.raises(DataError, match="differ from those it was trained with"):
        build_eval_data(other, {}, "val", tmp_path / "b")
