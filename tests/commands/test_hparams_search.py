"""Optuna sweeps (hparams_search): every preset composes; a 2-trial search runs end to end on synthetic data."""

from __future__ import annotations

import pytest
import yaml
from omegaconf import OmegaConf

from tests.conftest import CONF, compose_cfg, run_module, run_script

PRESETS = sorted(p.stem for p in (CONF / "hparams_search").glob("*.yaml"))
SEARCHED = {"optimizer.lr", "optimizer.weight_decay", "model.drop_rate", "label_smoothing", "data.image_size"}


def test_a_preset_per_shipped_data_set():
    assert {"pneumoniamnist_optuna", "darkcovidnet_optuna", "nih6_optuna", "nih14_optuna", "synthetic_optuna"} <= set(
        PRESETS
    )


@pytest.mark.parametrize("name", PRESETS)
def test_presets_compose_to_a_tpe_search_of_the_val_auroc(name):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"hparams_search={name}"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and cfg.optimized_metric == "val/auroc_macro"
    params = set(sweeper.params)
    assert SEARCHED <= params and params & {"backbone_lr_mult", "finetune.unfreeze_lr_mult"}
    assert cfg.data.name == name.removesuffix("_optuna")
    for key in params - {"model"}:  # every searched key exists in the composed config (a typo would not)
        assert OmegaConf.select(compose_cfg("train", [f"hparams_search={name}"]), key, default="missing") != "missing"


@pytest.mark.slow
def test_two_trial_search_writes_optimization_results_and_a_second_search_continues_the_study(tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "hparams_search=synthetic_optuna",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={sweep}",
        f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}",  # kept, so a later search continues it
        "model=simple_cnn",
        f"data.root={tmp_path / 'syn'}",
        "data.options.n_per_class=10",
        "data.options.size=48",
        "data.image_size=32",
        "data.batch_size=8",
        "trainer.max_epochs=1",
        "trainer.precision=32-true",
        "trainer.enable_progress_bar=false",
        "log_figures_every=100",
        "bootstrap.resamples=50",  # each trial's validation summary: not what this test checks
    ]
    proc = run_script("train.py", args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["name"] == "optuna" and 0.0 <= float(results["best_value"]) <= 1.0
    assert {"optimizer.lr", "model.drop_rate", "backbone_lr_mult"} <= set(results["best_params"])
    trials = sorted(p for p in sweep.iterdir() if (p / "metrics.json").is_file())
    assert len(trials) == 2
    lrs = {yaml.safe_load((t / "config.yaml").read_text())["optimizer"]["lr"] for t in trials}
    assert len(lrs) == 2  # the sampler proposed two learning rates
    table = run_module("bench.studies.sweep_table", [str(sweep), "--out", str(tmp_path / "t.json")])
    assert table.returncode == 0, table.stderr[-2000:]
    text = (tmp_path / "t.md").read_text()
    assert "| 0 |" in text and "| 1 |" in text and "optimizer.lr" in text and "best_value" in text
    assert f"**{float(results['best_value']):.4f}**" in text  # the best trial is the one the sweeper reported
    more = [*args, "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={tmp_path / 'more'}"]
    again = run_script("train.py", more, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    import optuna

    study = optuna.load_study(study_name="synthetic_simple_cnn", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3  # 2 + 1: the second search continued the first
