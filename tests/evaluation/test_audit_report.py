"""The shortcut audit's figures stay readable from two classes to NIH's 14 findings."""

from __future__ import annotations

import numpy as np
import torch

from lungnet.evaluation.audit_report import PER_ROW, WIDE, audit_figure, views_figure

SETTINGS = {"flag_auroc": 0.7, "cam_n": 4, "center": 0.7}


def result(n_classes: int) -> dict:
    """An audit result of ``n_classes`` classes, as `run_audit` gives it (the fields the figures read)."""
    view = {"value": 0.8, "lo": 0.7, "hi": 0.9}
    heat = {k: {"outside": 0.4, "border": 0.1} for k in ("trained", "random", "flat")}
    classes = [
        {"class": f"finding{i}", "verdict": "no shortcut signal found", "heat": heat}
        | {key: view for key in ("intact", "hidden", "border")}
        for i in range(n_classes)
    ]
    return {"n": 100, "classes": classes, "settings": SETTINGS}


def test_many_classes_get_a_row_each_with_name_and_verdict():
    fig = audit_figure(result(WIDE + 8))
    ax, bx = fig.axes
    names = [t.get_text() for t in ax.get_yticklabels()]
    assert names[0] == "finding0\nno shortcut signal found" and len(names) == WIDE + 8
    assert [t.get_text() for t in bx.get_yticklabels()][-1] == f"finding{WIDE + 7}"
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # the first class on top
    assert fig.get_size_inches()[1] > 6  # grows with the classes


def test_few_classes_stand_side_by_side():
    ax, _ = audit_figure(result(2)).axes
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"finding{i}\nno shortcut signal found" for i in range(2)]


def test_views_wrap_the_classes_into_rows_of_at_most_per_row():
    n = PER_ROW * 2
    maps = {f"finding{i}": {"trained": np.ones((7, 7)), "random": np.zeros((7, 7))} for i in range(n)}
    fig = views_figure(result(n), {"views": [torch.zeros(1, 1, 8, 8)] * 3, "maps": maps})
    grid = fig.axes[0].get_subplotspec().get_gridspec()
    assert (grid.nrows, grid.ncols) == (1 + 2 * 2, PER_ROW)
    titled = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert f"finding{n - 1}: random model" in titled and len(titled) == 3 + 2 * n
