"""Training curves from history.csv (and a run's older CSVLogger file): hand-written and from a real tiny run."""

import json

import matplotlib.pyplot as plt
import pytest

from lungnet.train.curves import epoch_table, final_numbers, resized_epochs, write_training_curves
from lungnet.train.history import read_history
from tests.scoring.test_plots import assert_png

CSV = """epoch,step,train/loss_step,train/loss_epoch,train/acc,val/loss,val/acc,val/auroc,val/f1
0,4,1.30,,,,,,
0,9,,,,1.10,0.40,0.60,0.30
0,9,,1.20,0.35,,,,
1,14,0.90,,,,,,
1,19,,,,0.80,0.60,0.75,0.55
1,19,,0.85,0.65,,,,
2,29,,,,0.70,0.70,0.80,0.66
2,29,,0.60,0.80,,,,
"""


def test_epoch_table_collapses_logger_rows(tmp_path):
    (tmp_path / "m.csv").write_text(CSV)
    table = epoch_table(tmp_path / "m.csv")
    assert table["epoch"].tolist() == [0, 1, 2]
    assert table["train/loss_epoch"].tolist() == [1.20, 0.85, 0.60]
    assert table["val/acc"].tolist() == [0.40, 0.60, 0.70]


def test_curves_from_a_hand_written_csv(tmp_path):
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text(CSV)
    (tmp_path / "metrics.json").write_text(json.dumps({"test": {"accuracy": 0.7, "f1_macro": 0.6, "auroc_macro": 0.8}}))
    assert final_numbers(tmp_path / "metrics.json") == (
        "Best checkpoint on test: accuracy 0.700, macro F1 0.600, macro AUROC 0.800"
    )
    (tmp_path / "last.json").write_text(json.dumps({"selected": "last", "val": {"accuracy": 0.7}}))
    assert final_numbers(tmp_path / "last.json") == (
        "Final checkpoint (checkpoint.select=last) on validation (no test split): accuracy 0.700"
    )
    path = write_training_curves(tmp_path)
    assert path == tmp_path / "curves.png"
    assert_png(path)


RESIZED = """epoch,step,train/loss_epoch,val/loss,val/acc,train/image_size
0,4,,1.10,0.40,
0,4,1.20,,,32
1,9,,0.80,0.60,
1,9,0.85,,,64
2,14,,0.70,0.70,
2,14,0.60,,,96
"""


def test_epochs_trained_below_the_full_size_are_found_and_shaded(tmp_path, monkeypatch):
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text(RESIZED)
    (tmp_path / "plain.csv").write_text(CSV)
    assert resized_epochs(epoch_table(tmp_path / "csv" / "metrics.csv")) == [0, 1]  # counted from 0
    assert resized_epochs(epoch_table(tmp_path / "plain.csv")) == []  # no progressive resizing: nothing shaded
    spans, real = [], plt.Axes.axvspan
    monkeypatch.setattr(plt.Axes, "axvspan", lambda ax, *a, **k: spans.append(a) or real(ax, *a, **k))
    assert_png(write_training_curves(tmp_path))
    assert sorted(spans) == [(-0.5, 0.5), (-0.5, 0.5), (0.5, 1.5), (0.5, 1.5)]  # epochs 0 and 1, on both panels


def test_no_record_means_no_figure(tmp_path, caplog):
    assert write_training_curves(tmp_path) is None
    assert not (tmp_path / "curves.png").exists()
    assert "history.csv holds no finished epoch: no training curves written" in caplog.text


def test_history_csv_is_drawn_before_a_loggers_csv(tmp_path, monkeypatch):
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text(CSV)
    history = "epoch,step,train/loss_epoch,val/loss,val/acc\n0,2,1.0,0.9,0.5\n1,4,0.8,0.7,0.6\n"
    (tmp_path / "history.csv").write_text(history)
    drawn, real = [], plt.Axes.plot
    monkeypatch.setattr(plt.Axes, "plot", lambda ax, x, *a, **k: drawn.append(list(x)) or real(ax, x, *a, **k))
    assert_png(write_training_curves(tmp_path))
    assert drawn and all(x == [0, 1] for x in drawn)  # history.csv's two epochs, counted from 0 (not metrics.csv's 3)


def test_curves_from_a_real_training_run(tiny_run):
    table = read_history(tiny_run / "history.csv")
    assert table["epoch"].tolist() == [0, 1]
    assert table[["train/loss_epoch", "val/loss", "train/acc", "val/acc"]].notna().all().all()
    assert "test" in final_numbers(tiny_run / "metrics.json")
    assert_png(write_training_curves(tiny_run))


@pytest.mark.parametrize("missing", ["epoch"])
def test_rejects_a_csv_without_epochs(tmp_path, missing):
    (tmp_path / "m.csv").write_text("step,val/loss\n1,0.5\n")
    with pytest.raises(ValueError, match=missing):
        epoch_table(tmp_path / "m.csv")
