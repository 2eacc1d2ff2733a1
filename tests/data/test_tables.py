"""Checks on label CSVs (`lungnet.data.tables`)."""

import pandas as pd

from lungnet.data.tables import blank_cells, finding_cells


def test_finding_cells_are_judged_per_distinct_cell_and_named_per_line():
    cells = pd.Series(["Effusion", "Efusion|{0}", "No Finding|Effusion", "Effusion", "Efusion|{0}", ""])
    said = finding_cells(cells, ["Effusion", "Mass"], "labels.csv")
    assert said[0] == said[3] == said[5] == ""
    assert said[1].startswith("unknown finding 'Efusion' in labels.csv line 3 (valid: No Finding, Effusion, Mass")
    assert said[4].startswith("unknown finding 'Efusion' in labels.csv line 6 (")
    assert said[2] == "'No Finding' beside a finding (No Finding|Effusion) in labels.csv line 4"


def test_blank_cells_name_their_columns_and_line():
    table = pd.DataFrame({"a": ["x", " ", "y", ""], "b": ["1", "2", "", ""]})
    assert blank_cells(table, ("a", "b"), "t.csv") == [
        "",
        "blank 'a' in t.csv line 3",
        "blank 'b' in t.csv line 4",
        "blank 'a', 'b' in t.csv line 5",
    ]
