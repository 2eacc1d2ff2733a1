"""lungnet.evaluation.bootstrap_unit: evaluate's intervals resample patients where the split names them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from lungnet.evaluation.audit import auroc_ci
from lungnet.evaluation.bootstrap_unit import patient_groups, phrase, record
from lungnet.evaluation.ensemble import compare_members
from lungnet.evaluation.generalisation import unpaired_drop
from lungnet.evaluation.subgroups import bootstrap_group, subgroup_markdown, subgroup_table
from lungnet.scoring.stats import bootstrap_ci, paired_bootstrap, per_class_auroc

LABELS = ["N", "P"]


def correlated(patients: int, films: int, seed: int = 1):
    """``films`` identical predictions per patient (perfectly correlated films), right about 3 times in 4."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, patients)
    p1 = y * 0.3 + rng.random(patients) * 0.6
    p1_b = np.clip(p1 + rng.normal(0, 0.2, patients), 0, 1)  # a second model, for paired intervals
    probs = np.repeat(np.stack([1 - p1, p1], 1), films, axis=0)
    probs_b = np.repeat(np.stack([1 - p1_b, p1_b], 1), films, axis=0)
    patient_ids = np.repeat([f"pat:{1000 - i}" for i in range(patients)], films)  # keys not in sorted order
    return probs, probs_b, np.repeat(y, films), patient_ids


def width(ci: dict) -> float:
    return ci["hi"] - ci["lo"]


def test_patient_groups_from_the_split_table():
    table = pd.DataFrame(
        {"path": ["a.png", "b.png", "c.png", "c.png", "d.png"], "patient": ["7", "7", "", "", np.nan]},
    )
    groups = patient_groups(["b.png", "a.png", "c.png", "d.png", "e.png"], table)
    assert groups.tolist() == ["pat:7", "pat:7", "img:c.png", "img:d.png", "img:e.png"]
    assert patient_groups(["c.png", "d.png"], table) is None  # no scored image has a patient: images resampled
    assert patient_groups(["a.png"], None) is None
    assert patient_groups(["a.png"], table.drop(columns="patient")) is None
    numeric = pd.DataFrame({"path": ["a.png", "b.png"], "patient": [12, 12]})  # ids read as numbers are ids too
    assert patient_groups(["a.png", "b.png"], numeric).tolist() == ["pat:12", "pat:12"]


def test_record_and_the_words_beside_the_intervals():
    groups = np.array(["pat:1", "pat:1", "pat:2", "img:x.png"])
    assert record(groups, 4, 100) == {"unit": "patient", "n_units": 3, "n_images": 4, "n_resamples": 100}
    assert record(None, 4, 100) == {"unit": "image", "n_units": 4, "n_images": 4, "n_resamples": 100}
    assert phrase(record(groups, 4, 100)).startswith("over patients (3 patients, 4 images")
    assert phrase(record(None, 4, 100)) == phrase({}) == "over images"  # older metrics.json: images


def test_correlated_films_widen_every_interval_only_by_patient():
    """Five identical films per patient: the image bootstrap sees 200 independent cases, the patient one 40."""
    probs, probs_b, targets, patients = correlated(40, 5)
    plain = bootstrap_ci(probs, targets, LABELS, False, resamples=300, seed=4)
    grouped = bootstrap_ci(probs, targets, LABELS, False, resamples=300, seed=4, groups=patients)
    for key in ("accuracy", "auroc_macro", "f1_macro"):
        assert grouped[key]["value"] == plain[key]["value"]
        assert width(grouped[key]) > 1.5 * width(plain[key]), key
    plain_d = paired_bootstrap(probs, probs_b, targets, False, resamples=300, seed=4)
    grouped_d = paired_bootstrap(probs, probs_b, targets, False, resamples=300, seed=4, groups=patients)
    assert width(grouped_d["auroc_macro"]) > 1.5 * width(plain_d["auroc_macro"])
    args = (probs, targets, False, 1, 0.5, 10, 300, 4)
    _, plain_s = bootstrap_group(*args)
    _, grouped_s = bootstrap_group(*args, patients)
    assert np.nanstd(grouped_s["auroc"]) > 1.5 * np.nanstd(plain_s["auroc"])


def test_one_film_per_patient_gives_the_image_intervals_exactly():
    probs, probs_b, targets, patients = correlated(60, 1)
    assert bootstrap_ci(probs, targets, LABELS, False, 200, 7, groups=patients) == bootstrap_ci(
        probs, targets, LABELS, False, 200, 7
    )
    assert paired_bootstrap(probs, probs_b, targets, False, 200, 7, groups=patients) == paired_bootstrap(
        probs, probs_b, targets, False, 200, 7
    )
    args = (probs, targets, False, 1, 0.5, 10, 200, 7)
    for key, draws in bootstrap_group(*args, patients)[1].items():
        np.testing.assert_array_equal(draws, bootstrap_group(*args)[1][key])


def test_patient_intervals_are_seeded():
    probs, _, targets, patients = correlated(30, 3)
    first = bootstrap_ci(probs, targets, LABELS, False, 100, 3, groups=patients)
    assert bootstrap_ci(probs, targets, LABELS, False, 100, 3, groups=patients) == first
    assert bootstrap_ci(probs, targets, LABELS, False, 100, 4, groups=patients) != first


def test_subgroup_intervals_resample_the_groups_patients():
    probs, _, targets, patients = correlated(40, 5)
    meta = pd.DataFrame({"age": "40-59", "sex": np.where(np.arange(200) < 100, "M", "F"), "view": "PA"})
    opts = {"bootstrap": {"resamples": 200, "seed": 0, "level": 0.95}, "bins": 10, "min_n": 30, "source": "nih6"}
    args = (meta, probs, targets, LABELS, False, {"P": 0.5}, opts)
    plain = subgroup_table(*args)[0].set_index(["attribute", "group"])
    grouped = subgroup_table(*args, patients)[0].set_index(["attribute", "group"])
    for group in (("sex", "M"), ("age", "40-59")):
        assert grouped.loc[group, "auroc"] == plain.loc[group, "auroc"]
        wide = grouped.loc[group, "auroc_hi"] - grouped.loc[group, "auroc_lo"]
        assert wide > 1.3 * (plain.loc[group, "auroc_hi"] - plain.loc[group, "auroc_lo"]), group
    frame, gaps = subgroup_table(*args, patients)
    assert "over the group's patients" in subgroup_markdown(frame, gaps, 30, None, by_patient=True)
    assert "over the group's images" in subgroup_markdown(frame, gaps, 30, None)


def stub_ensemble(probs, probs_b, targets, paths, table):
    """An `Evaluation`-like object with an ensemble of two members (what `compare_members` reads)."""
    ensemble = SimpleNamespace(
        name="ens",
        is_cross_validation=False,
        describe=lambda: [{"name": "a"}, {"name": "b"}],
    )
    loaded = SimpleNamespace(ensemble=ensemble, path="ens.json", multilabel=False, member_probs={"test": [probs_b] * 2})
    return SimpleNamespace(
        loaded=loaded,
        opts={"bootstrap": {"resamples": 200, "seed": 0, "level": 0.95}},
        split="test",
        data=SimpleNamespace(probs=probs, targets=targets, paths=paths),
        dm=SimpleNamespace(table=table),
    )


@pytest.mark.parametrize("named", [True, False])
def test_ensemble_member_differences_resample_patients_when_named(named):
    probs, probs_b, targets, patients = correlated(40, 5)
    paths = [f"img_{i}.png" for i in range(len(targets))]
    table = pd.DataFrame({"path": paths, "patient": [p.removeprefix("pat:") if named else "" for p in patients]})
    block = compare_members(stub_ensemble(probs, probs_b, targets, paths, table))
    unit = "patient" if named else "image"
    assert block["bootstrap"] == {"unit": unit, "n_units": 40 if named else 200, "n_images": 200, "n_resamples": 200}
    assert ("over patients" if named else "over images") in block["comparison"]
    d = block["members"][0]["vs_ensemble"]["auroc_macro"]
    expected = paired_bootstrap(probs, probs_b, targets, False, 200, 0, groups=patients if named else None)
    assert (d["lo"], d["hi"]) == (expected["auroc_macro"]["lo"], expected["auroc_macro"]["hi"])


def test_audit_auroc_intervals_resample_patients_and_keep_the_image_draws():
    probs, _, targets, patients = correlated(40, 5)
    truth = np.eye(2)[targets]
    rng = np.random.default_rng(2)  # the image draws the audit made before patients were known
    old = np.asarray([per_class_auroc(probs[i], truth[i], True) for i in rng.integers(0, 200, (100, 200))])
    plain = auroc_ci(probs, truth, 100, 2)
    assert plain[1]["lo"] == pytest.approx(np.quantile(old[:, 1], 0.025))
    grouped = auroc_ci(probs, truth, 100, 2, groups=patients)
    assert grouped[1]["value"] == plain[1]["value"]
    assert width(grouped[1]) > 1.5 * width(plain[1])


def test_transfer_drop_resamples_each_sets_patients():
    internal, _, t_int, g_int = correlated(40, 5, seed=2)
    external, _, t_ext, g_ext = correlated(30, 4, seed=3)
    boot = {"resamples": 200, "seed": 0, "level": 0.95}
    plain = unpaired_drop((internal, t_int, None), (external, t_ext, None), boot)
    grouped = unpaired_drop((internal, t_int, g_int), (external, t_ext, g_ext), boot)
    assert grouped["drop"] == plain["drop"]
    assert (grouped["internal_unit"], plain["external_unit"]) == ("patient", "image")
    assert width(grouped) > 1.5 * width(plain)
    one = correlated(50, 1, seed=4)  # one film per patient: the image draws exactly
    args = ((one[0], one[2], one[3]), (external, t_ext, None), boot)
    assert unpaired_drop(*args)["lo"] == unpaired_drop((one[0], one[2], None), *args[1:])["lo"]
