"""Cross-validation summary over real k-fold training runs: pooled out-of-fold predictions and the fold checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from lungnet.commands.crossval import main as crossval
from lungnet.data.sources import DataError
from lungnet.evaluation.compare import find_checkpoints
from lungnet.evaluation.folds import compare, find_fold_runs, render, summarise, write_summary
from lungnet.train.training import train
from tests.conftest import compose_cfg, make_class_folders, run_cli, run_module, start_module
from tests.evaluation.conftest import TINY

CLASSES = ["Covid-19", "No_findings", "Pneumonia"]


@pytest.fixture(scope="module")
def cv_runs(tmp_path_factory):
    """Three real 1-epoch folds of a 3-fold CV on a darkcovidnet-layout folder (final-epoch checkpoints)."""
    tmp = tmp_path_factory.mktemp("cv")
    data = make_class_folders(tmp / "dcn", CLASSES, 6)
    for fold in range(3):
        overrides = [
            "data=darkcovidnet",
            f"data.root={data}",
            "data.cv_folds=3",
            f"data.cv_fold={fold}",
            "checkpoint.select=last",
            "trainer.max_epochs=1",
            *TINY,
        ]
        train(compose_cfg("train", overrides), tmp / "multirun" / str(fold))
    return tmp / "multirun"


def test_pooled_out_of_fold_predictions_cover_every_image_once(cv_runs, tmp_path):
    runs = find_fold_runs(cv_runs)
    summary = summarise(runs, resamples=50, seed=0)
    oof = summary["oof"]
    assert summary["folds_found"] == [0, 1, 2] and summary["selected"] == ["last"]
    assert len(oof) == 18 and oof["path"].is_unique  # all 18 images, each scored once
    for fold in range(3):
        split = pd.read_csv(runs[fold] / "splits" / "val.csv")
        assert set(oof.loc[oof["fold"] == fold, "path"]) == set(split["path"])
        assert json.loads((runs[fold] / "metrics.json").read_text())["best_checkpoint"].endswith("last.ckpt")
    assert [p.name for p in find_checkpoints(str(cv_runs))] == ["last.ckpt"] * 3  # compare.py scores what was reported
    pooled_acc = float((oof["true"] == oof["predicted"]).mean())
    assert summary["pooled"]["accuracy"]["value"] == pytest.approx(pooled_acc)
    assert summary["resampled"] == "images"  # these file names carry no patient id


def test_the_pooled_intervals_resample_patients_when_the_splits_name_them(cv_runs, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(cv_runs, runs)
    for split_file in runs.glob("*/splits/val.csv"):
        table = pd.read_csv(split_file)
        table["patient"] = [f"p{Path(path).stem[-1]}" for path in table["path"]]  # 10 ids over 18 images
        table.to_csv(split_file, index=False)
    summary = summarise(find_fold_runs(runs), resamples=20, seed=0)
    patients = summary["oof"]["path"].map(lambda path: f"p{Path(path).stem[-1]}")
    assert (summary["oof"]["patient"] == patients).all()
    assert summary["resampled"] == f"patients ({patients.nunique()} for 18 images)"
    assert "resampling patients" in render(summary)
    per_fold = pd.DataFrame(summary["per_fold"])
    assert summary["mean"]["accuracy"] == pytest.approx(per_fold["accuracy"].mean())
    md = write_summary(summary, tmp_path / "out").read_text()
    assert "final epoch of each fold" in md and "mean ± sd" in md
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "cv_summary.md",
        "cv_summary.json",
        "cv_folds.csv",
        "oof_predictions.csv",
    }


def test_folds_that_do_not_belong_together_are_refused(cv_runs, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(cv_runs, mixed)
    shutil.copytree(mixed / "1", mixed / "1b")  # the same fold twice
    with pytest.raises(DataError, match="A fold appears twice"):
        summarise(find_fold_runs(mixed), resamples=10, seed=0)
    shutil.rmtree(mixed / "1b")
    config = mixed / "2" / "config.yaml"
    cfg = yaml.safe_load(config.read_text())
    cfg["data"]["split_seed"] = 99  # other folds: another k-fold split
    config.write_text(yaml.safe_dump(cfg))
    with pytest.raises(DataError, match=r"differ in split_seed: \['42', '99'\]"):
        summarise(find_fold_runs(mixed), resamples=10, seed=0)
    fold0 = yaml.safe_load((mixed / "0" / "config.yaml").read_text())
    cfg["data"]["split_seed"] = fold0["data"]["split_seed"]
    del cfg["data"]["split_seed"]  # a fold older than data.split_seed: split by its seed (42), as the others
    config.write_text(yaml.safe_dump(cfg))
    assert summarise(find_fold_runs(mixed), resamples=10, seed=0)["split_seed"] == 42
    cfg["data"]["split_seed"] = fold0["data"]["split_seed"]
    cfg["optimizer"]["lr"] = 0.5  # another recipe's fold
    config.write_text(yaml.safe_dump(cfg))
    with pytest.raises(DataError, match="different settings.*optimizer.lr"):
        summarise(find_fold_runs(mixed), resamples=10, seed=0)
    cfg["optimizer"]["lr"] = fold0["optimizer"]["lr"]
    cfg["data"]["verify"] = not fold0["data"]["verify"]  # decides which broken files drop out: it moves the folds
    config.write_text(yaml.safe_dump(cfg))
    with pytest.raises(DataError, match="different settings.*data.verify"):
        summarise(find_fold_runs(mixed), resamples=10, seed=0)
    cfg["data"]["verify"] = fold0["data"]["verify"]
    cfg["data"]["num_workers"], cfg["trainer"]["enable_progress_bar"] = 7, True  # how fast, not what: allowed
    cfg["new_key_in_a_later_version"] = 1
    config.write_text(yaml.safe_dump(cfg))
    assert summarise(find_fold_runs(mixed), resamples=10, seed=0)["folds_found"] == [0, 1, 2]


def test_two_cross_validations_are_compared_pairwise_on_common_folds(cv_runs, tmp_path, monkeypatch):
    """A variant whose out-of-fold predictions are all right beats the real folds by exactly their error rate."""
    base = summarise(find_fold_runs(cv_runs), resamples=50, seed=0)
    variant = {**base, "oof": base["oof"].copy(), "model": "oracle", "folds_found": [0, 1]}
    oof = variant["oof"]
    onehot = pd.get_dummies(oof["true"]).reindex(columns=CLASSES, fill_value=False).to_numpy(dtype=float)
    oof[[f"p_{c}" for c in CLASSES]] = onehot * 0.98 + 0.01
    variant["oof"] = oof[oof["fold"] < 2]
    result = compare(variant, base, resamples=100, seed=0)
    assert result["folds"] == [0, 1] and result["images"] == int((base["oof"]["fold"] < 2).sum())
    acc = result["metrics"]["accuracy"]
    common = base["oof"][base["oof"]["fold"] < 2]
    assert acc["a"] == 1.0 and acc["b"] == pytest.approx(float((common["true"] == common["predicted"]).mean()))
    assert acc["diff"] == pytest.approx(1.0 - acc["b"])
    with pytest.raises(DataError, match="differ in split_seed"):
        compare({**variant, "split_seed": 7}, base, resamples=10, seed=0)
    moved = base["oof"].copy()
    moved.loc[moved.index[0], "path"] = "/elsewhere/x.png"  # a fold with other images: another split
    with pytest.raises(DataError, match="different validation images"):
        compare(variant, {**base, "oof": moved}, resamples=10, seed=0)
    out = tmp_path / "cmp"
    run_cli(crossval, [f"runs={cv_runs}", f"baseline={cv_runs}", f"out={out}", "resamples=20"], monkeypatch)
    md = (out / "cv_comparison.md").read_text()
    assert "A - B [95% CI]" in md and "| accuracy |" in md
    assert json.loads((out / "cv_comparison.json").read_text())["metrics"]["accuracy"]["diff"] == 0.0


def test_incomplete_cv_is_summarised_with_a_warning_and_bad_input_exits_2(cv_runs, tmp_path, caplog, monkeypatch):
    partial = tmp_path / "partial"
    shutil.copytree(cv_runs / "0", partial / "0")
    summary = summarise(find_fold_runs(partial), resamples=20, seed=0)
    assert summary["folds_found"] == [0] and np.isnan(summary["std"]["accuracy"])
    assert "missing" in caplog.text
    with pytest.raises(SystemExit) as exc:
        run_cli(crossval, [f"runs={tmp_path / 'nowhere'}"], monkeypatch)
    assert exc.value.code == 2


def test_a_fold_killed_mid_training_is_named_not_silently_left_out(tmp_path, caplog):
    for fold in range(3):
        run = tmp_path / str(fold)
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "best.ckpt").write_bytes(b"x")
        if fold != 1:  # fold 1 was killed after its first checkpoint: no metrics.json, no predictions
            (run / "metrics.json").write_text("{}")
            (run / "predictions_val.csv").write_text("path\n")
    assert find_fold_runs(tmp_path) == [tmp_path / "0", tmp_path / "2"]
    assert "Skipping 1 unfinished" in caplog.text and str(tmp_path / "1") in caplog.text
    with pytest.raises(FileNotFoundError, match=r"No finished runs .*1 unfinished, skipped: .*/1\)"):
        find_fold_runs(tmp_path / "1")


def test_multilabel_folds_are_pooled_per_finding(tiny_nih, tmp_path):
    for fold in range(2):
        overrides = [
            "data=nih14",
            f"data.root={tiny_nih}",
            "data.cv_folds=2",
            f"data.cv_fold={fold}",
            "checkpoint.select=last",
            "trainer.max_epochs=1",
            *TINY,
        ]
        train(compose_cfg("train", overrides), tmp_path / "multirun" / str(fold))
    runs = find_fold_runs(tmp_path / "multirun")
    summary = summarise(runs, resamples=20, seed=0)
    assert summary["multilabel"] and "accuracy" not in summary["pooled"]
    n_test = len(pd.read_csv(runs[0] / "splits" / "test.csv"))  # the held-out test patients stay out of CV
    assert n_test > 0 and len(summary["oof"]) == 30 - n_test and summary["oof"]["path"].is_unique
    assert 0 <= summary["pooled"]["auroc_macro"]["value"] <= 1
    assert "auroc_macro" in write_summary(summary, tmp_path / "out").read_text()


def test_live_weights_bench_scores_both_weights_of_an_swa_cv(cv_runs, tmp_path):
    """bench.studies.cv_live_weights: the averaged pass reproduces each fold's reported accuracy; runs without a
    weight average are refused with one line."""
    data = make_class_folders(tmp_path / "dcn", CLASSES, 6)
    for fold in range(2):
        overrides = ["data=darkcovidnet", f"data.root={data}", "data.cv_folds=2", f"data.cv_fold={fold}"]
        overrides += ["checkpoint.select=last", *TINY, "trainer.max_epochs=2", "swa.epochs=2"]
        train(compose_cfg("train", overrides), tmp_path / "swa" / str(fold))
    out, live = tmp_path / "live.json", tmp_path / "live"
    inside = start_module(
        "bench.studies.cv_live_weights", [str(tmp_path / "swa"), "--live-runs", str(tmp_path / "swa" / "x")]
    )
    refused = start_module("bench.studies.cv_live_weights", [str(cv_runs)])  # both refusals run meanwhile
    args = [str(tmp_path / "swa"), "--resamples", "20", "--out", str(out), "--live-runs", str(live)]
    done = run_module("bench.studies.cv_live_weights", args)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())["result"]
    for fold in range(2):
        reported = json.loads((tmp_path / "swa" / str(fold) / "metrics.json").read_text())["val"]["accuracy"]
        assert result["per_fold"][str(fold)]["average"] == pytest.approx(reported)
    assert set(result["paired"]) >= {"accuracy", "auroc_macro"} and "| accuracy |" in done.stdout
    # the live weights as a cross-validation of their own: the same folds, the live scores, the average off
    summary = summarise(find_fold_runs(live), resamples=20, seed=0)
    assert summary["pooled"]["accuracy"]["value"] == pytest.approx(result["paired"]["accuracy"]["b"])
    assert [r["accuracy"] for r in summary["per_fold"]] == pytest.approx([result["per_fold"][f]["live"] for f in "01"])
    assert summary["selected"] == ["last"]
    written = OmegaConf.load(live / "fold0" / "config.yaml")
    assert written.swa.epochs == 0 and written.callbacks.swa.epochs == 0  # the average is off, resolved keys too
    paired = compare(summary, summarise(find_fold_runs(tmp_path / "swa"), resamples=20, seed=0), resamples=20, seed=0)
    assert paired["folds"] == [0, 1] and paired["images"] == len(summary["oof"])  # the same images, paired
    _, err = inside.communicate(timeout=600)
    assert inside.returncode != 0 and "lies inside" in err
    _, err = refused.communicate(timeout=600)
    assert refused.returncode != 0 and "holds no current_model_state" in err


def test_cv_ensemble_bench_averages_runs_image_by_image(cv_runs, tmp_path):
    """bench.studies.cv_ensemble: the ensemble's pooled accuracy is that of the mean probabilities per image; runs whose
    images sit in other folds are refused."""
    other = tmp_path / "other"
    shutil.copytree(cv_runs, other)
    rng = np.random.default_rng(0)
    for csv in other.rglob("predictions_val.csv"):
        table = pd.read_csv(csv)
        cols = [c for c in table.columns if c.startswith("p_")]
        table[cols] = rng.dirichlet(np.ones(len(cols)), size=len(table))
        table.to_csv(csv, index=False)
    out = tmp_path / "ens.json"
    done = run_module("bench.studies.cv_ensemble", [str(cv_runs), str(other), "--resamples", "20", "--out", str(out)])
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = (
        summarise(find_fold_runs(r), resamples=10, seed=0)["oof"].set_index("path").sort_index()
        for r in (cv_runs, other)
    )
    cols = [c for c in a.columns if c.startswith("p_")]
    mean = (a[cols].to_numpy() + b[cols].to_numpy()) / 2
    expected = float((mean.argmax(1) == a["true"].map({c[2:]: i for i, c in enumerate(cols)}).to_numpy()).mean())
    result = json.loads(out.read_text())["result"]
    assert result["n"] == 18 and result["ensemble"]["accuracy"]["value"] == pytest.approx(expected)
    moved = next(other.rglob("predictions_val.csv"))
    table = pd.read_csv(moved)
    table.loc[0, "true"] = next(c[2:] for c in cols if c[2:] != table.loc[0, "true"])
    table.to_csv(moved, index=False)
    refused = run_module("bench.studies.cv_ensemble", [str(cv_runs), str(other)])
    assert refused.returncode != 0 and "another label or fold" in refused.stderr


def test_protocols_bench_pairs_two_cross_validations_of_the_same_images(cv_runs, tmp_path):
    """bench.studies.cv_protocols: a run against itself differs by nothing; patients from the split files are the
    resampled groups; runs of other images are refused."""
    runs = tmp_path / "runs"
    shutil.copytree(cv_runs, runs)
    for split_file in runs.glob("*/splits/val.csv"):
        table = pd.read_csv(split_file)
        table["patient"] = [f"p{Path(path).stem[-1]}" for path in table["path"]]
        table.to_csv(split_file, index=False)
    out = tmp_path / "protocols.json"
    done = run_module("bench.studies.cv_protocols", [str(runs), str(cv_runs), "--resamples", "20", "--out", str(out)])
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())["result"]
    ids = {f"p{Path(path).stem[-1]}" for f in runs.glob("*/splits/val.csv") for path in pd.read_csv(f)["path"]}
    assert result["images"] == 18 and result["patients"] == len(ids) < 18
    assert result["metrics"]["accuracy"]["diff"] == 0 and result["metrics"]["accuracy"]["hi"] == 0
    shutil.rmtree(runs / "0")
    refused = run_module("bench.studies.cv_protocols", [str(runs), str(cv_runs)])
    assert refused.returncode != 0 and "did not score the same images" in refused.stdout + refused.stderr


def test_heldout_ensemble_bench_pairs_the_fold_average_with_one_model(cv_runs, tmp_path):
    """bench.studies.heldout_ensemble: the ensemble is the mean of the folds' test probabilities, each paired with the
    single run on the same held-out images (patients from its split file); other test images are refused."""
    runs, single = tmp_path / "runs", tmp_path / "single"
    shutil.copytree(cv_runs, runs)
    rng = np.random.default_rng(0)
    paths = [f"/data/{c}/img_{i}.png" for c in CLASSES for i in range(4)]
    true = [Path(p).parent.name for p in paths]

    def write_test(run: Path) -> np.ndarray:
        probs = rng.dirichlet(np.ones(len(CLASSES)), size=len(paths))
        table = pd.DataFrame({"path": paths, "true": true, **{f"p_{c}": probs[:, j] for j, c in enumerate(CLASSES)}})
        run.mkdir(parents=True, exist_ok=True)
        table.to_csv(run / "predictions_test.csv", index=False)
        return probs

    members = [write_test(run) for run in sorted(runs.glob("[0-9]"))]
    alone = write_test(single)
    (single / "splits").mkdir()
    patients = [f"p{i // 2}" for i in range(len(paths))]  # two images per patient
    split = pd.DataFrame({"path": paths, "label": true, "patient": patients})
    split.to_csv(single / "splits" / "test.csv", index=False)
    out = tmp_path / "heldout.json"
    done = run_module(
        "bench.studies.heldout_ensemble", [str(runs), str(single), "--resamples", "20", "--out", str(out)]
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())["result"]
    targets = np.array([CLASSES.index(t) for t in true])
    ensemble = np.mean(members, axis=0)
    acc = result["paired"]["ensemble - single"]["accuracy"]
    assert acc["a"] == pytest.approx(float((ensemble.argmax(1) == targets).mean()))
    assert acc["b"] == pytest.approx(float((alone.argmax(1) == targets).mean()))
    assert result["patient_groups"] == len(paths) // 2 and set(result["paired"]) == {
        "ensemble - single",
        *(f"fold {k} - single" for k in range(3)),
    }
    pd.read_csv(single / "predictions_test.csv").iloc[1:].to_csv(single / "predictions_test.csv", index=False)
    refused = run_module("bench.studies.heldout_ensemble", [str(runs), str(single)])
    assert refused.returncode != 0 and "other test images" in refused.stderr
