"""compare(): several checkpoints on the same images -> table, bar charts, overlaid ROC; mismatched labels refused."""

import shutil

import pandas as pd
import pytest
import torch

from lungnet.data.sources import DataError
from lungnet.evaluation.compare import compare, find_checkpoints, model_names
from tests.evaluation.conftest import compose_cfg
from tests.scoring.test_plots import assert_png


def _variant(src, dst, noise: float = 0.0, labels: list[str] | None = None):
    """A copy of checkpoint ``src`` at ``dst`` with perturbed weights and/or another label list."""
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    gen = torch.Generator().manual_seed(0)
    for key, value in ckpt["state_dict"].items():
        if key.startswith("model.") and value.is_floating_point():
            value.add_(noise * torch.randn(value.shape, generator=gen))
    if labels is not None:
        ckpt["hyper_parameters"]["labels"] = labels
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, dst)
    return dst


@pytest.fixture(scope="module")
def multirun(tiny_ckpt, tmp_path_factory):
    root = tmp_path_factory.mktemp("multirun")
    first = root / "0_synthetic_simple_cnn" / "checkpoints" / "best.ckpt"
    first.parent.mkdir(parents=True)
    shutil.copy(tiny_ckpt, first)
    _variant(tiny_ckpt, root / "1_synthetic_noisy" / "checkpoints" / "best.ckpt", noise=0.05)
    for run in root.iterdir():
        (run / "metrics.json").write_text("{}")  # finished runs: training writes metrics.json last
    return root


def test_compare_writes_table_and_charts(multirun, tmp_path):
    cfg = compose_cfg("compare", [f"runs={multirun}", "split=test", "bootstrap.resamples=100", "report.html=false"])
    frame = compare(cfg, tmp_path)
    assert frame["model"].tolist() == ["0_synthetic_simple_cnn", "1_synthetic_noisy"]
    table = pd.read_csv(tmp_path / "comparison.csv")
    assert len(table) == 2
    assert {"accuracy", "accuracy_lo", "accuracy_hi", "f1_macro", "auroc_macro", "loss", "ece"} <= set(table.columns)
    assert (table["accuracy_lo"] <= table["accuracy"]).all() and (table["accuracy"] <= table["accuracy_hi"]).all()
    assert table["loss"].iloc[0] != table["loss"].iloc[1]  # the perturbed model is a different model
    md = (tmp_path / "comparison.md").read_text()
    assert "0_synthetic_simple_cnn" in md and "1_synthetic_noisy" in md and "](comparison_bars.png)" in md
    for name in ("comparison_bars.png", "comparison_roc.png"):
        assert_png(tmp_path / name)
    for model in frame["model"]:
        assert (tmp_path / model / "report.md").is_file() and (tmp_path / model / "roc.png").is_file()


def test_compare_refuses_different_label_lists(tiny_ckpt, tmp_path):
    other = _variant(tiny_ckpt, tmp_path / "other.ckpt", labels=["Normal", "Consolidation", "Cavity", "Flu"])
    cfg = compose_cfg("compare", [f"runs=[{tiny_ckpt},{other}]"])
    with pytest.raises(DataError, match="different label lists"):
        compare(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before evaluating anything


def test_find_checkpoints_and_names(multirun, tiny_ckpt, tmp_path):
    found = find_checkpoints(str(multirun))
    assert [p.parent.parent.name for p in found] == ["0_synthetic_simple_cnn", "1_synthetic_noisy"]
    assert find_checkpoints(f"{found[0]},{found[1]}") == found
    assert find_checkpoints([str(found[0].parent.parent)]) == [found[0]]
    assert model_names([found[0], found[0]]) == ["0_synthetic_simple_cnn", "0_synthetic_simple_cnn_2"]
    with pytest.raises(FileNotFoundError, match="neither"):
        find_checkpoints(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="without any training run"):
        find_checkpoints(str(tmp_path))


def test_an_unfinished_run_is_skipped_and_named(tmp_path, caplog):
    """A sweep trial killed after its first best.ckpt (no metrics.json) is not compared as if it had finished."""
    for name in ("0_done", "1_killed"):
        (tmp_path / name / "checkpoints").mkdir(parents=True)
        (tmp_path / name / "checkpoints" / "best.ckpt").write_bytes(b"x")
    (tmp_path / "0_done" / "metrics.json").write_text("{}")
    assert find_checkpoints(str(tmp_path)) == [tmp_path / "0_done" / "checkpoints" / "best.ckpt"]
    assert "Skipping 1 unfinished" in caplog.text and str(tmp_path / "1_killed") in caplog.text
    with pytest.raises(FileNotFoundError, match="without any finished training run"):
        find_checkpoints(str(tmp_path / "1_killed"))
