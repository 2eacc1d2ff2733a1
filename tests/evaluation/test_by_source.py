"""Per-source reporting of a multi-source model: per-set intervals, the set as a subgroup, the source probe."""

import numpy as np
import pandas as pd
import pytest

from lungnet.evaluation.audit import probe_verdict, source_groups
from lungnet.evaluation.by_source import per_source_markdown, per_source_metrics
from lungnet.evaluation.source_probe import source_probe, tells_sources_apart
from lungnet.evaluation.subgroups import subgroup_metadata, subgroup_table

BOOT = {"resamples": 60, "seed": 0, "level": 0.95}
LABELS = ["No Finding", "Pneumonia", "Effusion"]


def two_sets(n: int = 40, seed: int = 0):
    """Probabilities, targets (set b does not annotate Effusion) and the set of each image."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 2, (2 * n, 3)).astype(np.float32)
    targets[n:, 2] = np.nan
    probs = np.clip(np.nan_to_num(targets, nan=0.5) * 0.4 + rng.random((2 * n, 3)) * 0.6, 0, 1)
    return probs, targets, ["a"] * n + ["b"] * n


def test_per_source_intervals_are_present_and_ordered():
    probs, targets, sources = two_sets()
    patients = np.repeat(np.arange(40), 2).astype(str)  # two films per patient
    out = per_source_metrics(probs, targets, LABELS, sources, BOOT, patients)
    for name in ("a", "b"):
        ci = out[name]["confidence_intervals"]["auroc_macro"]
        assert ci["lo"] <= ci["value"] <= ci["hi"] and ci["resamples"] > 0
        assert ci["value"] == pytest.approx(out[name]["auroc_macro"])
    assert "auroc/Effusion" in out["a"]["confidence_intervals"]
    assert "auroc/Effusion" not in out["b"]["confidence_intervals"] and out["b"]["unknown"] == ["Effusion"]
    assert "confidence_intervals" not in per_source_metrics(probs, targets, LABELS, sources)["a"]  # training: none
    result = {"n": 80, "auroc_macro": 0.7, "bootstrap": BOOT, **out}
    text = per_source_markdown(result, ["a", "b"])
    assert text.startswith("## Per data set") and "| b | 40 |" in text and "Effusion" in text
    lo, hi = (
        out["a"]["confidence_intervals"]["auroc_macro"]["lo"],
        out["a"]["confidence_intervals"]["auroc_macro"]["hi"],
    )
    assert f"[{lo:.3f}, {hi:.3f}]" in text


class _DM:
    def __init__(self, table):
        self.table, self.source = table, None


def test_source_is_a_subgroup_of_a_two_source_evaluation():
    probs, targets, sources = two_sets()
    paths = [f"{s}/{i}.png" for i, s in enumerate(sources)]
    meta = subgroup_metadata(_DM(pd.DataFrame({"path": paths, "source": sources})), paths)
    assert list(meta.columns) == ["source"]
    opts = {"bootstrap": {**BOOT, "resamples": 20}, "bins": 10, "min_n": 10}
    frame, gaps = subgroup_table(meta, probs, targets, LABELS, True, {"Pneumonia": 0.5, "Effusion": 0.5}, opts)
    rows = frame[(frame["attribute"] == "source") & (frame["class"] == "Pneumonia")]
    assert list(rows["group"]) == ["a", "b"] and list(rows["n"]) == [40, 40]
    effusion = frame[frame["class"] == "Effusion"]
    assert list(effusion["group"]) == ["a"]  # set b does not annotate Effusion: no row, not a zero
    assert any(g["attribute"] == "source" for g in gaps)
    one = pd.DataFrame({"path": paths, "source": ["a"] * len(paths)})
    assert subgroup_metadata(_DM(one), paths) is None  # one data set: no source grouping


def features_of(images: np.ndarray) -> np.ndarray:
    """Stand-in penultimate features: each image's mean over a 4x4 grid of patches."""
    n, h, w = images.shape
    return images.reshape(n, 4, h // 4, 4, w // 4).mean(axis=(2, 4)).reshape(n, 16)


def test_source_probe_flags_separable_sources_and_not_exchangeable_ones():
    rng = np.random.default_rng(1)
    images = rng.random((80, 16, 16))
    sets = np.array(["a"] * 40 + ["b"] * 40)
    truth = rng.integers(0, 2, (80, 2)).astype(float)
    patients = np.repeat(np.arange(40), 2).astype(str)
    bright = images + (sets == "b")[:, None, None] * 0.2  # set b's images brighter
    probe = source_probe(features_of(bright), sets, truth, seed=0, patients=patients)
    assert probe["probe_auroc"] > 0.95 and probe["balanced_accuracy"] > 0.9 and probe["patients_grouped"]
    assert probe["probe_auroc_ci"][0] > 0.5 and tells_sources_apart(probe, 0.8)
    verdict = probe_verdict(probe, "the data set each image comes from", {"source_auroc": 0.8})
    assert verdict["tells_apart"] and "tell the data sets apart (source probe AUROC" in verdict["statement"]
    assert "DeGrave et al. 2021; Zech et al. 2018" in verdict["statement"]
    exchangeable = rng.permutation(sets)  # the same generator for both, labels at random
    probe = source_probe(features_of(images), exchangeable, truth, seed=0, patients=patients)
    assert probe["probe_auroc"] < 0.75 and probe["chance"] == {"auroc": 0.5, "balanced_accuracy": 0.5}
    assert not tells_sources_apart(probe, 0.8)
    assert probe_verdict(probe, "x", {"source_auroc": 0.8}) == {"tells_apart": False}


def test_audit_sources_are_the_data_sets_when_there_are_several(tmp_path):
    paths = [str(tmp_path / f"{i}.png") for i in range(4)]  # no files read: the data sets come first
    groups, how = source_groups(paths, "auto", None, sets=["a", "a", "b", "b"])
    assert list(groups) == ["a", "a", "b", "b"] and how == "the data set each image comes from"
    assert source_groups(paths, "none", None, sets=["a", "b", "a", "b"])[0] is None
