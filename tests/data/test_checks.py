"""Data checks at setup: every class trainable before and after splitting."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from lungnet.data.checks import check_class_sizes, check_training_classes
from lungnet.data.sources import DataError


def _table(rows: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["label", "split"])


def test_a_class_without_training_images_after_splitting_stops():
    labels = ["A", "B"]
    table = _table([("A", "train"), ("A", "val"), ("B", "val"), ("B", "val"), ("B", "test")])
    with pytest.raises(DataError, match=r"no training image of \['B'\] after splitting .*'val': 2.*Add images"):
        check_training_classes(table, labels, "x", multilabel=False)
    check_training_classes(_table([("A", "train"), ("B", "train"), ("B", "val")]), labels, "x", multilabel=False)


def test_class_sizes_count_every_class_the_model_is_told_about():
    table = _table([("A", ""), ("A", ""), ("B", "")])
    with pytest.raises(DataError, match=r"'B' has 1, 'C' has 0 usable image\(s\) \(3 unreadable"):
        check_class_sizes(table, ["A", "B", "C"], "x", left_out=3)
    check_class_sizes(table.iloc[:2], ["A"], "x")


def test_multilabel_findings_without_positives_only_warn(caplog):
    table = pd.DataFrame({"split": ["train", "train", "val"], "Effusion": [1.0, 0.0, 1.0], "Hernia": [0.0, 0.0, 1.0]})
    with caplog.at_level(logging.WARNING):
        check_training_classes(table, ["Effusion", "Hernia"], "nih14", multilabel=True)
    assert "['Hernia']" in caplog.text and "Effusion" not in caplog.text.split("image of")[1]
