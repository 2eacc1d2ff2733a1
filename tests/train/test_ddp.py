"""Multi-process (DDP, gloo on CPU): metrics are synced across ranks and equal a single-process run."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from lungnet.artifacts.checkpoint import load_model
from lungnet.artifacts.paths import decision_path
from lungnet.data.datamodule import LungDataModule
from lungnet.evaluation.after_training import finish_training
from lungnet.evaluation.eval_data import data_config
from lungnet.train.training import train
from tests.conftest import ROOT, compose_cfg, make_class_folders


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    # 8 val images per class -> 16: divisible by 2 ranks, so DistributedSampler adds no padding duplicates
    data = make_class_folders(tmp / "pneu", ["NORMAL", "PNEUMONIA"], 8, ["train", "val"])
    cfg = compose_cfg(
        "train",
        [
            "data=pneumoniamnist",
            f"data.root={data}",
            "model=simple_cnn",
            "data.image_size=32",
            "data.batch_size=4",
            "data.num_workers=0",
            "data.persistent_workers=false",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
        ],
    )
    train(cfg, tmp / "run")
    return tmp / "run" / "checkpoints" / "best.ckpt"


def _validate(ckpt, devices, out):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "ddp_validate.py"), str(ckpt), str(devices), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_ddp_metrics_equal_single_process(tiny_ckpt, tmp_path):
    single = _validate(tiny_ckpt, 1, tmp_path / "one.json")
    multi = _validate(tiny_ckpt, 2, tmp_path / "two.json")
    assert multi["world_size"] == 2 and single["world_size"] == 1
    for key in ("val/acc", "val/auroc", "val/f1", "val/loss"):
        assert multi[key] == pytest.approx(single[key], abs=1e-5), key


def test_train_py_with_two_ddp_processes_completes(tmp_path):
    """python train.py trainer=ddp_cpu: 2 gloo processes train, rank 0 alone writes the run directory; rank 0 scans
    the data set into its manifest, rank 1 reads it and scans nothing. After training rank 0 reuses the ranks'
    gathered outputs of the selected epoch's validation pass, each rank scores its half of test and the OOD gate's
    training sample, and rank 0's metrics and predictions equal a single-process finish on the same checkpoint."""
    out = tmp_path / "outputs"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "trainer=ddp_cpu",
            "model=simple_cnn",
            "data.image_size=32",
            f"data.root={tmp_path / 'syn'}",
            "data.options.n_per_class=12",
            "data.options.size=48",
            "trainer.max_epochs=1",
            "ood.fit_max=15",  # the gate's sample: 15 of the training images, split 7 + 8
            f"paths.log_dir={out}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [p for p in out.glob("*/*") if (p / "metrics.json").exists()]
    assert len(runs) == 1
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert metrics["test"]["n"] > 0 and (runs[0] / "checkpoints" / "best.ckpt").exists()
    logged = proc.stdout + proc.stderr
    scanned = re.findall(r"manifest: 0 unchanged, (\d+) re-scanned", logged)  # rank 0, first use
    read = re.findall(r"manifest: (\d+) unchanged, 0 re-scanned", logged)  # rank 1
    assert scanned == ["48"] and read == ["48"], re.findall(r"manifest: .*", logged)
    shares = re.findall(r"Scored (\d+) of (\d+) (\w+) images on rank (\d) of 2", logged)
    assert "Val outputs: reused from the validation pass of epoch 0" in logged
    assert not [share for share in shares if share[2] == "val"], shares
    for split, total in (("test", metrics["test"]["n"]), ("train", 15)):
        ranks = {int(r): int(n) for n, m, s, r in shares if s == split and int(m) == total}
        assert sorted(ranks) == [0, 1] and sum(ranks.values()) == total, (split, shares)
    single_process_finish_is_the_same(runs[0], metrics, tmp_path / "single")


def single_process_finish_is_the_same(run, metrics, where):
    """`finish_training` in this process on a copy of the run's checkpoint: the same metrics and predictions."""
    ckpt = where / "best.ckpt"
    ckpt.parent.mkdir()
    shutil.copy(run / "checkpoints" / "best.ckpt", ckpt)
    loaded = load_model(ckpt)
    dm = LungDataModule(data_config(loaded, {}), loaded.spec, seed=loaded.seed)
    dm.setup("fit")
    single = finish_training(OmegaConf.load(run / "config.yaml"), ckpt, dm, where, progress_bar=False)
    for split in ("val", "test"):
        for key, value in single[split].items():
            if isinstance(value, float):
                assert metrics[split][key] == pytest.approx(value, abs=1e-5, nan_ok=True), (split, key)
    ours, theirs = pd.read_csv(run / "predictions_val.csv"), pd.read_csv(where / "predictions_val.csv")
    pd.testing.assert_frame_equal(ours, theirs, atol=1e-6)
    files = (run / "checkpoints" / "best.decision.json", decision_path(ckpt))
    ranks, one = (json.loads(path.read_text()) for path in files)
    assert one["ood_fit_n"] == ranks["ood_fit_n"] == 15
    # the gate from the ranks' summed statistics of their halves of the sample, as one fitted on the whole sample
    for part in ("features", "image"):
        for key in ("noise", "threshold"):
            assert ranks["ood"][part][key] == pytest.approx(one["ood"][part][key], rel=1e-3), (part, key)
    np.testing.assert_allclose(ranks["ood"]["reference_scores"], one["ood"]["reference_scores"], rtol=1e-3)
