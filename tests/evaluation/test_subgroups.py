"""Subgroup metrics: age bands, NIH metadata, per-group metrics with intervals, too-small groups, the largest gap."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lungnet.evaluation.subgroups import (
    ATTRIBUTES,
    age_band,
    audited_classes,
    nih_metadata,
    subgroup_figure,
    subgroup_markdown,
    subgroup_table,
    thresholds_in_sample,
)

OPTS = {"bootstrap": {"resamples": 200, "seed": 0, "level": 0.95}, "bins": 10, "min_n": 30, "source": "nih6"}


def test_age_bands_accept_numbers_and_nih_strings():
    bands = age_band(pd.Series([5, 17, 18, 39, 40, 59, 60, 94, "058Y", None]))
    assert bands.tolist()[:9] == ["0-17", "0-17", "18-39", "18-39", "40-59", "40-59", "60+", "60+", "40-59"]
    assert pd.isna(bands.iloc[9])


def test_nih_metadata_joins_on_the_file_name(tmp_path):
    (tmp_path / "Data_Entry_2017.csv").write_text(
        "Image Index,Finding Labels,Patient Age,Patient Gender,View Position\n"
        "a.png,No Finding,70,F,AP\nb.png,Pneumonia,12,M,PA\n"
    )
    meta = nih_metadata(tmp_path, ["/x/images/b.png", "/x/images/a.png", "/x/images/c.png"])
    assert meta["age"].tolist()[:2] == ["0-17", "60+"] and meta["sex"].tolist()[:2] == ["M", "F"]
    assert pd.isna(meta["view"].iloc[2])
    assert nih_metadata(tmp_path / "missing", ["a.png"]) is None


def synthetic_predictions(n=400, seed=0):
    """Binary predictions that are good for men and poor for women; 20 children (too small)."""
    rng = np.random.default_rng(seed)
    sex = np.where(np.arange(n) % 2 == 0, "M", "F")
    targets = rng.integers(0, 2, n)
    noise = np.where(sex == "M", 0.15, 0.6)
    p1 = np.clip(targets * 0.6 + 0.2 + rng.normal(0, noise), 0.01, 0.99)
    probs = np.stack([1 - p1, p1], 1)
    age = np.where(np.arange(n) < 20, "0-17", "40-59")
    meta = pd.DataFrame({"age": age, "sex": sex, "view": np.where(np.arange(n) % 3 == 0, "AP", "PA")})
    return meta, probs, targets


def test_subgroup_table_measures_each_group_and_the_largest_gap():
    meta, probs, targets = synthetic_predictions()
    frame, gaps = subgroup_table(meta, probs, targets, ["No Finding", "Pneumonia"], False, {"Pneumonia": 0.5}, OPTS)
    assert set(frame["class"]) == {"Pneumonia"}  # the normal class is not audited
    rows = frame.set_index(["attribute", "group"])
    assert rows.loc[("sex", "M"), "auroc"] > rows.loc[("sex", "F"), "auroc"] + 0.1
    assert rows.loc[("age", "0-17"), "too_small"] and not rows.loc[("age", "40-59"), "too_small"]
    m = rows.loc[("sex", "M")]
    assert m["auroc_lo"] <= m["auroc"] <= m["auroc_hi"] and m["fnr"] == pytest.approx(1 - m["sensitivity"])
    sex_gap = next(g for g in gaps if g["attribute"] == "sex" and g["metric"] == "auroc")
    assert (sex_gap["high"], sex_gap["low"]) == ("M", "F") and 0 < sex_gap["lo"] <= sex_gap["gap"] <= sex_gap["hi"]
    assert not any(g["attribute"] == "age" for g in gaps)  # one group left after the too-small one
    fig = subgroup_figure(frame, 30)
    assert len(fig.axes) == 3


def test_audited_classes_leave_the_normal_class_out():
    assert audited_classes(["NORMAL", "PNEUMONIA"], {"NORMAL": 0.2, "PNEUMONIA": 0.4}, "pneumonia") == ["PNEUMONIA"]
    assert audited_classes(["No Finding"], {"No Finding": 0.5}, None) == ["No Finding"]


def _many_groups(classes: int, groups: int) -> pd.DataFrame:
    """``classes`` x ``groups`` rows of the subgroup table (in-sample sensitivities of 1.0)."""
    rows = []
    for c in range(classes):
        for g in range(groups):
            attribute = ATTRIBUTES[g % 3]
            row = {"attribute": attribute, "group": f"group {g} with a rather long name", "class": f"finding {c}"}
            row.update(n=100 + g, positives=20, too_small=g == 0, threshold=0.3, fnr=0.0, fnr_lo=0.0, fnr_hi=0.1)
            for metric, value in (("auroc", 0.7), ("sensitivity", 1.0), ("ece", 0.1)):
                row.update({metric: value, f"{metric}_lo": value - 0.05, f"{metric}_hi": min(1.0, value + 0.05)})
            rows.append(row)
    return pd.DataFrame(rows).sort_values(["class", "attribute"], kind="stable")


@pytest.mark.parametrize(("classes", "groups"), [(4, 8), (1, 32)])
def test_group_labels_never_overlap_and_in_sample_sensitivity_says_so(classes, groups):
    fig = subgroup_figure(_many_groups(classes, groups), 30, in_sample=True)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes[::3]:  # the first column carries the group labels
        boxes = sorted((t.get_window_extent(renderer) for t in ax.get_yticklabels()), key=lambda b: b.y0)
        assert len(boxes) == groups
        assert all(low.y1 <= high.y0 for low, high in zip(boxes, boxes[1:], strict=False)), "labels overlap"
    titles = [ax.get_title() for ax in fig.axes]
    assert sum("IN-SAMPLE" in t for t in titles) == classes and all("IN-SAMPLE" in t for t in titles[1::3])
    assert not any("IN-SAMPLE" in t for t in subgroup_figure(_many_groups(1, 8), 30).axes[1].get_title())


def test_thresholds_fitted_on_the_evaluated_split_are_in_sample():
    assert thresholds_in_sample({"split": "all", "operating_point": {"fit_split": "all", "source": "fitted"}})
    assert not thresholds_in_sample({"split": "test", "operating_point": {"fit_split": "val", "source": "fitted"}})
    assert not thresholds_in_sample({"split": "val", "operating_point": {"fit_split": "file", "source": "file"}})
    frame = _many_groups(1, 3)
    assert "sensitivity (IN-SAMPLE)" in subgroup_markdown(frame, [], 30, None, in_sample=True)
    assert "IN-SAMPLE" not in subgroup_markdown(frame, [], 30, None)


def test_multilabel_ece_is_each_findings_own():
    """A multi-label row's ECE is its finding's calibration: a perfectly calibrated finding beside a badly
    calibrated one gets a lower ECE than it (the pooled ECE was the same number in both rows)."""
    rng = np.random.default_rng(1)
    n = 2000
    p_good = rng.random(n)
    good = (rng.random(n) < p_good).astype(float)  # present with its stated probability
    bad = rng.integers(0, 2, n).astype(float)  # present half the time whatever the model says
    probs = np.stack([p_good, np.full(n, 0.95)], 1)
    targets = np.stack([good, bad], 1)
    meta = pd.DataFrame({"sex": np.where(np.arange(n) % 2 == 0, "M", "F")})
    opts = {**OPTS, "bootstrap": {**OPTS["bootstrap"], "resamples": 20}}
    frame, _ = subgroup_table(meta, probs, targets, ["A", "B"], True, {"A": 0.5, "B": 0.5}, opts)
    ece = frame[frame.group == "M"].set_index("class")["ece"]
    assert ece["A"] < 0.06 and ece["B"] > 0.4


def test_single_label_ece_is_titled_as_the_top_labels_of_all_classes():
    meta, probs, targets = synthetic_predictions()
    frame, _ = subgroup_table(meta, probs, targets, ["No Finding", "Pneumonia"], False, {"Pneumonia": 0.5}, OPTS)
    titles = [ax.get_title() for ax in subgroup_figure(frame, 30, multilabel=False).axes]
    assert "Pneumonia: ECE (top label, all classes)" in titles
    assert "ECE (top label, all classes)" in subgroup_markdown(frame, [], 30, None, multilabel=False)


def test_a_single_label_models_ece_is_computed_once_per_group_and_is_what_each_class_would_compute(monkeypatch):
    from lungnet.evaluation import subgroups
    from lungnet.scoring import stats

    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(3), 300)
    targets = rng.integers(0, 3, 300)
    meta = pd.DataFrame({"sex": np.where(np.arange(300) % 2 == 0, "M", "F")})
    opts = {**OPTS, "bootstrap": {**OPTS["bootstrap"], "resamples": 20}}
    calls, ece = [], stats.expected_calibration_error
    monkeypatch.setattr(subgroups.stats, "expected_calibration_error", lambda *a: calls.append(1) or ece(*a))
    frame, _ = subgroup_table(meta, probs, targets, ["No Finding", "A", "B"], False, {"A": 0.4, "B": 0.4}, opts)
    assert len(frame) == 4 and len(calls) == 2 * 21  # two groups, each once and 20 resamples: not once per class
    men = meta["sex"].to_numpy() == "M"
    point, draws = subgroups.bootstrap_group(probs[men], targets[men], False, 2, 0.4, 10, 20, 0)  # B, on its own
    row = frame.set_index(["group", "class"]).loc[("M", "B")]
    assert row["ece"] == point["ece"]
    assert (row["ece_lo"], row["ece_hi"]) == stats.percentile_interval(draws["ece"], 0.95)
