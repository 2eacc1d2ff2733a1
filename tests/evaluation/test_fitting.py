"""operating_point.file: a thresholds file is untrusted input, checked like a decision file's thresholds."""

from __future__ import annotations

import json

import pytest

from lungnet.data.sources import DataError
from lungnet.evaluation.fitting import read_thresholds


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ({"thresholds": {"B": float("nan")}}, "thresholds.B is nan; accepted: a number in [0, 1], or null"),
        ({"B": 1.5}, "thresholds.B is 1.5"),
        ({"thresholds": [0.5]}, "thresholds is [0.5]; accepted: a JSON object"),
        ([0.5], "thresholds is [0.5]"),
    ],
)
def test_a_bad_threshold_is_one_line_naming_the_file(tmp_path, content, named):
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DataError) as err:
        read_thresholds(path, ["A", "B"])
    assert str(path) in str(err.value) and named in str(err.value) and "\n" not in str(err.value)


def test_good_thresholds_read(tmp_path):
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps({"thresholds": {"A": 0.3, "B": None}}))
    assert read_thresholds(path, ["A", "B"]) == {"A": 0.3}
