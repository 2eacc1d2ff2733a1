"""data=multi: several data sets in one run (lungnet.data.multi, lungnet.data.multi_splits)."""

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from lungnet.data.datamodule import LungDataModule
from lungnet.data.multi import MultiSource, member_config, sample_weights, source_shares
from lungnet.data.sources import DataError
from lungnet.evaluation.pipeline import evaluate
from lungnet.models.specs import ModelSpec
from lungnet.scoring.metrics import compute_metrics
from lungnet.train.training import train
from tests.conftest import ROOT, TINY, compose_cfg, make_class_folders, offline_env, write_png

SPEC = ModelSpec(name="t", arch="t", input_size=32, in_chans=1, mean=(0.5,), std=(0.25,))


@pytest.fixture
def three_sets(tmp_path, tiny_nih):
    """pneumonia (Kaggle layout), darkcovidnet (NIH-named films, one a byte copy of an NIH image) and tiny NIH."""
    pneumonia = make_class_folders(tmp_path / "pn", ["NORMAL", "PNEUMONIA"], 6, ["train", "test"], size=40)
    dark = tmp_path / "dc"
    k = 500
    for cls in ("Covid-19", "No_findings", "Pneumonia"):
        for i in range(6):
            k += 1
            name = f"covid_{i}.png" if cls == "Covid-19" else f"{20 + k % 7:08d}_{k:03d}.png"
            write_png(dark / cls / name, k, size=36)
    # the same film as NIH's 00000003_001.png (patient 3), and another film of NIH's patient 4
    shutil.copy(tiny_nih / "images" / "00000003_001.png", dark / "Pneumonia" / "00000003_001.png")
    write_png(dark / "No_findings" / "00000004_009.png", 999)
    roots = {"pneumonia": str(pneumonia), "darkcovidnet": str(dark), "nih14": str(tiny_nih)}
    return {"source": "multi", "root": str(tmp_path), "sources": list(roots), "roots": roots, "batch_size": 4}


def _row(table, source, name):
    return table[(table["source"] == source) & table["path"].str.endswith(name)].iloc[0]


def test_union_of_findings_and_unknown_is_nan_never_negative(three_sets):
    src = MultiSource(three_sets)
    assert src.labels[:3] == ["No Finding", "Pneumonia", "COVID-19"] and "Effusion" in src.labels
    table = src.scan()
    pn = table[(table["source"] == "pneumonia") & (table["label"] == "PNEUMONIA")].iloc[0]
    assert pn["Pneumonia"] == 1 and pn["No Finding"] == 0  # the set's own classes exclude each other
    assert math.isnan(pn["Effusion"]) and math.isnan(pn["COVID-19"])  # not annotated by a two-class set: unknown
    dark = _row(table, "darkcovidnet", "00000003_001.png")
    assert dark["Pneumonia"] == 1 and dark["COVID-19"] == 0 and math.isnan(dark["Effusion"])
    nih = _row(table, "nih14", "00000002_000.png")
    assert math.isnan(nih["COVID-19"]) and not math.isnan(nih["Effusion"]) and nih["No Finding"] in (0, 1)
    covid = table[(table["source"] == "darkcovidnet") & (table["label"] == "Covid-19")].iloc[0]
    assert covid["COVID-19"] == 1 and covid["No Finding"] == 0 and math.isnan(covid["Pneumonia"])  # OVERLAPS
    assert dark["patient"] == "nih:3" and _row(table, "nih14", "00000003_000.png")["patient"] == "nih:3"
    assert pn["patient"] == ""  # no patient id in img_000.png: its own group
    assert MultiSource({**three_sets, "findings": ["Effusion", "Pneumonia"]}).labels == ["Effusion", "Pneumonia"]
    with pytest.raises(DataError, match="data.findings: 'Tuberculosis' is annotated by none of the sets"):
        MultiSource({**three_sets, "findings": ["Tuberculosis"]})


def test_splits_keep_copies_and_patients_across_sets_together(three_sets, tmp_path):
    run = tmp_path / "run"
    dm = LungDataModule({**three_sets, "near_duplicates": "group"}, SPEC, seed=0, run_dir=run)
    dm.setup()
    table = dm.table
    copy = table[table["path"].str.endswith("00000003_001.png")]
    assert len(copy) == 2 and copy["split"].nunique() == 1  # the NIH film and its DarkCovidNet copy
    patient4 = table[table["patient"] == "nih:4"]
    assert set(patient4["source"]) == {"nih14", "darkcovidnet"} and patient4["split"].nunique() == 1
    for source, rows in table.groupby("source"):  # every set has training images
        assert (rows["split"] == "train").any(), source
    report = json.loads((run / "data_report.json").read_text())["sources"]
    assert report["cross_source_copies"]["byte_copies"] == {
        "images": 2,
        "groups": 1,
        "pairs": {"darkcovidnet/nih14": 1},
    }
    assert "Effusion" in report["sets"]["pneumonia"]["unknown"] and report["sets"]["nih14"]["sizes"]["train"] > 0
    assert "source" in pd.read_csv(run / "splits" / "train.csv").columns


def test_source_balance_weights_and_class_balance():
    table = pd.DataFrame({"source": ["a"] * 90 + ["b"] * 10, "label": ["x"] * 80 + ["y"] * 10 + ["z"] * 10})
    for balance, share_a in (("none", 0.9), ("equal", 0.5), ("sqrt", 3 / 4)):
        w = sample_weights(table, balance, class_balance=False)
        assert w.sum() == pytest.approx(1) and w[:90].sum() == pytest.approx(share_a), balance
        assert np.allclose(w[:90], w[0])  # alike within a set
    w = sample_weights(table, "equal", class_balance=True)
    assert w[:80].sum() == pytest.approx(0.25) and w[80:90].sum() == pytest.approx(0.25)  # x and y alike within a
    assert source_shares({"a": 4, "b": 0}, "equal") == {"a": 1.0, "b": 0.0}
    with pytest.raises(DataError, match="source_balance"):
        source_shares({"a": 1}, "log")


def test_masked_metrics_equal_metrics_over_known_targets():
    from sklearn.metrics import roc_auc_score

    probs = np.array([[0.9, 0.2], [0.1, 0.7], [0.95, 0.4], [0.3, 0.6], [0.6, 0.1]])
    targets = np.array([[1, 0], [0, 1], [np.nan, 0], [0, np.nan], [0, 1]], dtype=np.float32)
    masked = compute_metrics(probs, targets, ["a", "b"], multilabel=True)
    known = [0, 1, 3, 4]  # a's NaN (row 2, a high score of a negative-looking image) is left out, not a negative
    assert masked["per_class"]["a"]["auroc"] == pytest.approx(roc_auc_score(targets[known, 0], probs[known, 0]))
    assert masked["per_class"]["a"]["auroc"] != pytest.approx(roc_auc_score(np.nan_to_num(targets[:, 0]), probs[:, 0]))
    assert masked["per_class"]["b"]["positives"] == 2
    unknown = compute_metrics(probs, np.where(np.arange(2) == 1, np.nan, targets), ["a", "b"], multilabel=True)
    assert (
        math.isnan(unknown["per_class"]["b"]["auroc"]) and unknown["auroc_macro"] == masked["per_class"]["a"]["auroc"]
    )


def test_config_interface_and_root_override(tmp_path):
    cfg = compose_cfg(
        "train", ["data=multi", "data.sources=[pneumonia,darkcovidnet]", f"data.roots.pneumonia={tmp_path}"]
    )
    assert list(cfg.data.sources) == ["pneumonia", "darkcovidnet"] and cfg.data.source == "multi"
    assert member_config("pneumonia", "/data", dict(cfg.data.roots))["root"] == str(tmp_path)
    assert member_config("darkcovidnet", "/data", {})["root"] == "/data/darkcovidnet"  # as for one data set
    missing = {"source": "multi", "root": str(tmp_path), "sources": ["darkcovidnet"], "roots": {}}
    with pytest.raises(
        DataError, match=r"data set 'darkcovidnet' \(data.sources\) not found: .*data.roots.darkcovidnet="
    ):
        MultiSource(missing).scan()
    with pytest.raises(DataError, match="data.roots.nih14 names no data set"):
        MultiSource({**missing, "roots": {"nih14": str(tmp_path)}})


def test_unknown_set_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "data=multi",
            "data.sources=[nih14,nosuch]",
            f"paths.log_dir={tmp_path}",
        ],
        cwd=tmp_path,
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "data.sources: unknown data set 'nosuch'" in out and "Traceback" not in out
    assert not list(tmp_path.rglob("*.ckpt"))


def test_train_writes_per_source_metrics_and_predictions(three_sets, tmp_path):
    roots = [f"data.roots.{name}={path}" for name, path in three_sets["roots"].items()]
    sets = "data.sources=[pneumonia,darkcovidnet,nih14]"
    cfg = compose_cfg(
        "train", ["data=multi", sets, *roots, "data.source_balance=equal", *TINY, "bootstrap.resamples=0"]
    )
    run = tmp_path / "run"
    results = train(cfg, run)
    val = json.loads((run / "metrics.json").read_text())["val"]
    assert {"auroc_macro", "n", "pneumonia", "darkcovidnet", "nih14"} <= set(val)
    assert val["n"] == sum(val[s]["n"] for s in ("pneumonia", "darkcovidnet", "nih14"))
    assert "Effusion" in val["pneumonia"]["unknown"] and "Effusion" not in val["pneumonia"]["per_class"]
    assert "Effusion" in val["nih14"]["per_class"] and "COVID-19" in val["nih14"]["unknown"]
    predictions = pd.read_csv(run / "predictions_val.csv")
    assert predictions.columns[1] == "source" and set(predictions["source"]) <= set(three_sets["roots"])
    assert results["val"]["n"] == len(predictions)
    ckpt = f"ckpt={run / 'checkpoints' / 'best.ckpt'}"
    per_source = ["report.figures=false", "report.html=false", "bootstrap.resamples=20", "audit.cam_n=0", "explain.n=0"]
    cfg = compose_cfg("evaluate", [ckpt, "split=val", *per_source])  # intervals and the audit's source probe on
    out = evaluate(cfg, tmp_path / "eval")  # evaluate.py: the same per-set keys and source column
    assert out["darkcovidnet"]["n"] == val["darkcovidnet"]["n"] and "COVID-19" in out["nih14"]["unknown"]
    assert "source" in pd.read_csv(tmp_path / "eval" / "predictions.csv").columns
    check_per_source_report(out, tmp_path / "eval", list(three_sets["roots"]))


def check_per_source_report(out: dict, run, sets: list[str]) -> None:
    """Per-set intervals, the Per data set section, the set as a subgroup, the source probe on the data sets."""
    for name in sets:
        ci = out[name]["confidence_intervals"]["loss"]
        assert ci["resamples"] == 20 and ci["lo"] <= ci["value"] <= ci["hi"]
    report = (run / "report.md").read_text()
    assert "## Per data set" in report and all(f"| {name} | {out[name]['n']} |" in report for name in sets)
    groups = {r["group"] for r in out["subgroups"]["rows"] if r["attribute"] == "source"}
    assert groups == set(sets) and "Data set" in report
    probe = out["audit"]["source"]
    assert probe["how"] == "the data set each image comes from" and set(probe["sources"]) == set(sets)
    if min(probe["sources"].values()) >= 2 and probe["folds"] >= 2:  # each set's own split: a tiny set may lack images
        assert 0 <= probe["probe_auroc"] <= 1
    else:
        assert probe["probe_auroc"] is None and "fewer than 2" in probe["note"]
    assert isinstance(probe["tells_apart"], bool)
    assert ("statement" in probe) == probe["tells_apart"]


def test_each_sets_own_images_are_split_as_its_single_source_run():
    """Without films shared across sets, every image of a set gets the split that set's own run gives it (so a
    pooled model and a single-set model hold out the same images); a film shared across sets follows the first."""
    from lungnet.data.multi_splits import assign_multi_splits
    from lungnet.data.splits import assign_splits

    rng = np.random.default_rng(3)

    def one(name: str, n: int) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "path": [f"/{name}/{i}.png" for i in range(n)],
                "label": rng.choice(["a", "b"], n),
                "patient": [f"{name}:p{i // 2}" for i in range(n)],
                "split": "",
                "sha1": [f"{name}{i}" for i in range(n)],
                "source": name,
            }
        )

    a, b = one("a", 60), one("b", 40)
    b.loc[0, "sha1"] = a.loc[5, "sha1"]  # one film in both sets
    cfg = {"val_fraction": 0.2, "test_fraction": 0.2, "carve_val": False}
    out = assign_multi_splits(pd.concat([a, b]), {"a": cfg, "b": cfg}, seed=7, cv=(0, 0))
    for name, alone in (("a", a), ("b", b)):
        own = assign_splits(alone, 7, 0.2, 0.2, False, 0, 0).set_index("path")["split"]
        pooled = out[out["source"] == name].set_index("path")["split"]
        shared = {"/b/0.png", "/b/1.png"} if name == "b" else set()  # the shared film and its patient's other
        assert {p: s for p, s in pooled.items() if p not in shared} == {p: s for p, s in own.items() if p not in shared}
    where = out.set_index("path")["split"]
    assert where["/b/0.png"] == where["/b/1.png"] == where["/a/5.png"]
