"""Config-only refusals (`lungnet.commands.preflight`): one line, exit 2, before torch loads, and no folder left
behind by any
command; each command's ``--help`` lists only the groups it reads; the model names known without torch; and the
metric a sweep optimises (``optimized_metric``)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import yaml

from lungnet.commands import rundir
from lungnet.commands.preflight import optimized_value
from lungnet.errors import ConfigError
from lungnet.models.names import library_names, unknown_model
from tests.conftest import ROOT, command_main, offline_env, run_cli

# command -> (a config-level mistake, the words its one line must hold); {ckpt} exists, {dir} is an existing folder
REFUSALS = {
    "train": (["model.name=resnet181"], "Unknown model 'resnet181'"),
    "evaluate": (["ckpt={ckpt}", "split=valid"], "split=valid is not a split this command reads"),
    "predict": (["ckpt={ckpt}", "input={dir}/nope.png"], "input="),
    "compare": (["runs={dir}", "split=valid"], "split=valid is not a split"),
    "crossval": (["runs={dir}/nowhere"], "runs="),
    "transfer": (["runs={dir}", "split=valid"], "choose one of: auto, val, test, train"),
    "loso": (["runs={dir}", "split=train"], "choose one of: auto, val, test"),
    "audit": (["ckpt={ckpt}", "data.root={dir}/nowhere"], "Data root for dataset of the checkpoint not found"),
    "explain": (["ckpt={ckpt}", "images=valid"], "images=valid: not found"),
    "export": (["ckpt={dir}/nonexist.ckpt"], "nonexist.ckpt: not found"),
    "app": (["ckpt={dir}/nonexist.ckpt"], "nonexist.ckpt: not found"),
}
NO_RUN_DIR = {"crossval", "export", "app"}  # they write into the working directory (hydra.run.dir=.), no run folder


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_a_config_level_refusal_is_one_line_exit_2_and_leaves_no_folder(name, tmp_path, monkeypatch, caplog, capsys):
    here, data, outputs = tmp_path / "cwd", tmp_path / "data", tmp_path / "outputs"
    here.mkdir()
    data.mkdir()
    (data / "best.ckpt").write_bytes(b"not read: the config is refused first")
    monkeypatch.chdir(here)  # from an empty folder: a refused call must not remove it (nor leave anything in it)
    args, expected = REFUSALS[name]
    args = [a.format(ckpt=data / "best.ckpt", dir=data) for a in args]
    if name not in NO_RUN_DIR:
        args.append(f"paths.log_dir={outputs}")
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="lungnet"), pytest.raises(SystemExit) as exc:
        run_cli(command_main(name), args, monkeypatch)
    assert exc.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    said = capsys.readouterr()
    if not errors:  # app, export, crossval log to stdout (hydra/job_logging=stdout), past caplog
        errors = [line for line in (said.out + said.err).splitlines() if "Error: " in line]
    assert len(errors) == 1 and expected in errors[0] and "Traceback" not in said.err, errors
    assert here.is_dir() and not list(here.iterdir()), "the working directory must stay, and stay empty"
    assert not outputs.exists(), sorted(outputs.rglob("*"))


def test_a_folder_lungnet_did_not_create_is_never_removed(tmp_path):
    """remove_stray_run_dir of a folder RunDirGuard did not prepare in this call (the working directory)."""
    assert rundir.remove_stray_run_dir(tmp_path) is False and tmp_path.is_dir()


def test_refusals_come_before_torch_loads(tmp_path):
    """The refusal happens in a process that never imported torch (the import alone takes seconds)."""
    (tmp_path / "best.ckpt").write_bytes(b"x")
    code = (
        "import atexit, sys; atexit.register(lambda: print('TORCH', 'torch' in sys.modules)); "
        "import importlib; sys.argv = ['x'] + sys.argv[1:]; "
        "importlib.import_module('lungnet.commands.' + sys.argv.pop(1)).main()"
    )
    for args in (
        ["evaluate", f"ckpt={tmp_path / 'best.ckpt'}", "split=valid"],
        ["evaluate"],  # ckpt=<value> is required
        ["train", "optimizer.lr=-1"],
        ["train", "data=pneumonia", f"data.root={tmp_path / 'nowhere'}"],
        ["evaluate", "--help"],
    ):
        proc = subprocess.run(
            [sys.executable, "-c", code, *args, f"paths.log_dir={tmp_path / 'o'}"],
            cwd=tmp_path,
            env=offline_env(PYTHONPATH=str(ROOT)),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == (0 if "--help" in args else 2), proc.stderr
        assert "TORCH False" in proc.stdout, (args, proc.stdout[-500:], proc.stderr[-2000:])
    assert not (tmp_path / "o").exists()


# the README's checkout forms ``python -m <module>`` -> the command REFUSALS holds its mistake under
MODULE_COMMANDS = {
    "lungnet.app": "app",
    "lungnet.audit": "audit",
    "lungnet.evaluation.crossval": "crossval",
    "lungnet.evaluation.transfer": "transfer",
    "lungnet.explain": "explain",
    "lungnet.export": "export",
    "lungnet.prepare": None,  # no ckpt: a data root that is no folder
}


@pytest.mark.parametrize("module", sorted(MODULE_COMMANDS))
def test_python_m_forms_refuse_and_help_before_torch_loads(module, tmp_path):
    """``python -m <module>`` (run as runpy does it) answers ``--help`` and a refusal without importing torch."""
    (tmp_path / "best.ckpt").write_bytes(b"x")
    code = (
        "import atexit, runpy, sys; atexit.register(lambda: print('TORCH', 'torch' in sys.modules)); "
        "sys.argv = ['x'] + sys.argv[2:]; runpy.run_module(sys.argv_module, run_name='__main__', alter_sys=True)"
    ).replace("sys.argv_module", repr(module))
    name = MODULE_COMMANDS[module]
    refusal = REFUSALS[name][0] if name else ["data=pneumonia", "data.root={dir}/nowhere"]
    folder = [] if name in NO_RUN_DIR else [f"paths.log_dir={tmp_path / 'o'}"]  # those write into the cwd
    for args in (["--help"], [a.format(ckpt=tmp_path / "best.ckpt", dir=tmp_path) for a in refusal]):
        proc = subprocess.run(
            [sys.executable, "-c", code, module, *args, *folder],
            cwd=tmp_path,
            env=offline_env(PYTHONPATH=str(ROOT)),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == (0 if args == ["--help"] else 2), (args, proc.stdout[-500:], proc.stderr[-2000:])
        assert "TORCH False" in proc.stdout, (args, proc.stdout[-500:], proc.stderr[-2000:])
    assert [p.name for p in tmp_path.iterdir()] == ["best.ckpt"]


@pytest.mark.parametrize("name", ["evaluate", "predict", "compare", "audit", "transfer"])
def test_help_lists_only_the_groups_the_command_reads(name, monkeypatch, capsys):
    run_cli(command_main(name), ["--help"], monkeypatch)
    out = capsys.readouterr().out
    assert f"Usage: lungnet-{name}" in out and "== " in out
    for training_only in ("callbacks:", "debug:", "hparams_search:", "experiment:", "optimizer:"):
        assert training_only not in out, out
    assert " _base" not in out and "paths: default" in out


def test_train_help_lists_its_groups_and_overrides_show(monkeypatch, capsys):
    run_cli(command_main("train"), ["seed=7", "--help"], monkeypatch)
    out = capsys.readouterr().out
    assert "hparams_search: " in out and "model: densenet121" in out and " _base" not in out
    assert "seed: 7" in out


def test_model_names_read_without_torch_match_the_libraries():
    import timm
    import torchvision

    assert set(timm.list_models()) <= library_names("timm")
    assert set(torchvision.models.list_models()) == library_names("torchvision")
    assert unknown_model("resnet18") == unknown_model("convnext_tiny.fb_in1k") == ""
    assert unknown_model("torchvision.resnet18") == ""
    assert "resnet181" in unknown_model("resnet181") and "resnet2" in unknown_model("torchvision.resnet2")


def test_optimized_value_is_the_named_metric_or_a_clear_error():
    results = {"val": {"auroc_macro": 0.9, "f1_macro": 0.4, "loss": 0.7}, "test": {"auroc_macro": 0.8}}
    assert optimized_value(results, "val/f1_macro") == 0.4
    assert optimized_value(results, "test/auroc_macro") == 0.8
    assert optimized_value({}, "val/f1_macro") is None  # no metrics written (fast_dev_run)
    with pytest.raises(ConfigError, match=r"optimized_metric=val/f1: .*val/auroc_macro, val/f1_macro"):
        optimized_value(results, "val/f1")
    with pytest.raises(ConfigError, match="optimized_metric=f1_macro: must be <split>/<metric>"):
        optimized_value(results, "f1_macro")


def test_a_search_maximises_the_metric_optimized_metric_names(tmp_path, monkeypatch):
    """A two-trial Optuna search (training monkeypatched) on val/f1_macro: the best value is the best trial's F1,
    not its AUROC, which goes the other way."""
    from lungnet.train import training

    f1 = iter([0.2, 0.6])

    def fake_train(cfg, run_dir):
        value = next(f1)
        return {"val": {"f1_macro": value, "auroc_macro": 1.0 - value}}

    monkeypatch.setattr(training, "train", fake_train)
    sweep = tmp_path / "sweep"
    args = ["-m", "hparams_search=synthetic_optuna", "hydra.sweeper.n_trials=2", "optimized_metric=val/f1_macro"]
    args += [f"hydra.sweep.dir={sweep}", f"paths.log_dir={tmp_path}", f"data.root={tmp_path / 'syn'}"]
    run_cli(command_main("train"), args, monkeypatch)
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(0.6)
