"""The finding vocabulary: every source's labels mapped, and the mapping between a model and another data set."""

import numpy as np
import pytest

from lungnet.data import labels as L
from lungnet.data.findings import FINDINGS, SOURCE_FINDINGS, LabelMapping, finding_of, mapping_text
from lungnet.data.sources import SOURCES


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_label_of_every_source_has_a_finding(source):
    labels = SOURCES[source].labels or L.NIH6
    for lab in labels:
        finding = finding_of(lab, source)
        assert finding is not None, (source, lab)
        assert finding in FINDINGS or finding.startswith("synthetic:")


@pytest.mark.parametrize(
    ("source", "label", "finding"),
    [
        ("pneumonia", "NORMAL", "No Finding"),
        ("pneumonia", "PNEUMONIA", "Pneumonia"),
        ("darkcovidnet", "No_findings", "No Finding"),
        ("darkcovidnet", "Covid-19", "COVID-19"),
        ("cxr4", "Normal", "No Finding"),
        ("cxr4", "COVID-19", "COVID-19"),
        ("lung5", "Bacterial Pneumonia", "Pneumonia"),
        ("lung5", "Viral Pneumonia", "Pneumonia"),
        ("lung5", "Corona Virus Disease", "COVID-19"),
        ("nih6", "No Finding", "No Finding"),
        ("nih14", "Pleural_Thickening", "Pleural_Thickening"),
        ("synthetic", "Normal", "synthetic:Normal"),
        (None, "TURBERCULOSIS", "Tuberculosis"),
        (None, "healthy", "No Finding"),
        (None, "Cardiomegaly", "Cardiomegaly"),
        (None, "fracture", None),
    ],
)
def test_label_to_finding(source, label, finding):
    assert finding_of(label, source) == finding


def test_tables_agree_with_the_generic_spellings():
    for source, table in SOURCE_FINDINGS.items():
        if source != "synthetic":
            assert {lab: finding_of(lab) for lab in table} == table, source


def test_pneumonia_model_on_darkcovidnet_leaves_covid_out():
    m = LabelMapping.between("pneumonia", L.PNEUMONIA, "darkcovidnet", L.DARKCOVIDNET)
    assert m.scored == ["No Finding", "Pneumonia"]
    assert m.left_out_labels == ["Covid-19"] and m.unscored_model_labels == []
    assert [m.target(lab) for lab in L.DARKCOVIDNET] == [None, 0, 1]
    probs = np.array([[0.2, 0.8], [0.9, 0.1]])
    np.testing.assert_allclose(m.scores(probs), probs)


def test_darkcovidnet_model_on_nih_renormalises_over_the_shared_findings():
    m = LabelMapping.between("darkcovidnet", L.DARKCOVIDNET, "nih6", ["No Finding", "Pneumonia", "Effusion"])
    assert m.scored == ["No Finding", "Pneumonia"]
    assert m.unscored_model_labels == ["Covid-19"] and m.left_out_labels == ["Effusion"]
    np.testing.assert_allclose(m.scores(np.array([[0.5, 0.1, 0.4]])), [[0.2, 0.8]])
    assert ["(absent)", "COVID-19", "Covid-19: not scored, the data lack it"] in m.rows()


def test_split_pneumonia_labels_are_summed():
    m = LabelMapping.between("lung5", L.LUNG5, "pneumonia", L.PNEUMONIA)
    assert m.scored == ["Pneumonia", "No Finding"]  # the model's output order
    assert m.unscored_model_labels == ["Corona Virus Disease", "Tuberculosis"]
    probs = np.array([[0.3, 0.2, 0.2, 0.1, 0.2]])  # bacterial, covid, normal, tb, viral
    np.testing.assert_allclose(m.scores(probs), [[0.5 / 0.7, 0.2 / 0.7]])


def test_synthetic_shares_nothing_with_patient_data():
    assert LabelMapping.between("synthetic", L.SYNTHETIC, "darkcovidnet", L.DARKCOVIDNET).scored == []


def test_restricting_the_scored_findings():
    m = LabelMapping.between("darkcovidnet", L.DARKCOVIDNET, "darkcovidnet", L.DARKCOVIDNET)
    assert m.scored == ["COVID-19", "No Finding", "Pneumonia"]
    r = m.restricted(["No Finding", "Pneumonia"])
    assert r.scored == ["No Finding", "Pneumonia"] and r.left_out_labels == ["Covid-19"]
    np.testing.assert_allclose(r.scores(np.array([[0.6, 0.1, 0.3]])), [[0.25, 0.75]])
    assert m.restricted(None) is m


def test_restricting_to_a_misspelled_finding_is_refused():
    from lungnet.errors import DataError

    m = LabelMapping.between("cxr4", L.CXR4, "darkcovidnet", L.DARKCOVIDNET)
    assert m.restricted(["Normal", "Pneumonia", "COVID-19"]).scored == m.scored  # Normal is No Finding's alias
    with pytest.raises(DataError, match=r"findings=\['Pneumonai'\] name no known finding"):
        m.restricted(["Pneumonai", "COVID-19"])


def test_an_external_evaluation_with_one_shared_finding_is_refused():
    from types import SimpleNamespace

    from lungnet.errors import DataError
    from lungnet.evaluation.external import check_mapping

    loaded = SimpleNamespace(multilabel=False, path="best.ckpt", data={"name": "pneumonia"}, labels=L.PNEUMONIA)
    one = LabelMapping.between("pneumonia", L.PNEUMONIA, "nih6", ["Atelectasis", "Pneumonia", "Effusion"])
    assert one.scored == ["Pneumonia"]
    with pytest.raises(DataError, match="have only Pneumonia in common .*: scoring needs two findings") as exc:
        check_mapping(loaded, "nih6", ["Atelectasis", "Pneumonia", "Effusion"], one)
    assert "model pneumonia: NORMAL -> No Finding, PNEUMONIA -> Pneumonia;" in str(exc.value)


def test_the_mapping_used_is_named_in_one_line():
    phantoms = LabelMapping.between("synthetic", ["Normal", "Haze"], "nih6", ["No Finding", "Pneumonia"])
    assert phantoms.describe() == (
        "mapped through lungnet/data/findings.py: model synthetic: Normal -> synthetic:Normal, Haze -> synthetic:Haze "
        "(phantom findings, shared with no patient data set); data nih6: No Finding, Pneumonia as named; shared: none"
    )
    dark = LabelMapping.between("pneumonia", L.PNEUMONIA, "darkcovidnet", ["Covid-19", "No_findings", "Pneumonia"])
    assert "data darkcovidnet: Covid-19 -> COVID-19, No_findings -> No Finding, Pneumonia as named" in dark.describe()
    assert dark.describe().endswith("shared: No Finding, Pneumonia")
    mine = "mine: Normal -> No Finding, Fracture -> no finding (not scored)"
    assert mapping_text("mine", ["Normal", "Fracture"]) == mine
