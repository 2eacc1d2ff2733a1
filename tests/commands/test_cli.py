"""The command lines (`lungnet.commands.wrapper`): Hydra help for every entry point, one line and exit 2 for a bad
command line
or an unwritable run directory, no run folder left behind by a refused or failed call, and the installable wheel."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lungnet import io as lungnet_io
from lungnet.commands import rundir
from lungnet.commands import wrapper as cli
from tests.conftest import ROOT, command_main, offline_env, run_cli

# every entry point as a user starts it from a checkout, and an override that --cfg job must show
ENTRY_POINTS = {
    "train": ([str(ROOT / "train.py")], "seed=7", "seed: 7"),
    "evaluate": ([str(ROOT / "evaluate.py")], "split=val", "split: val"),
    "predict": ([str(ROOT / "predict.py")], "batch_size=3", "batch_size: 3"),
    "compare": ([str(ROOT / "compare.py")], "split=val", "split: val"),
    "app": (["-m", "lungnet.app"], "port=8123", "port: 8123"),
    "export": (["-m", "lungnet.export"], "opset=13", "opset: 13"),
    "explain": (["-m", "lungnet.explain"], "n=3", "'n': 3"),
    "crossval": (["-m", "lungnet.evaluation.crossval"], "resamples=20", "resamples: 20"),
    "audit": (["-m", "lungnet.audit"], "audit.cam_n=3", "cam_n: 3"),
    "transfer": (["-m", "lungnet.evaluation.transfer"], "overlap=refuse", "overlap: refuse"),
    "loso": (["-m", "lungnet.commands.loso"], "split=test", "split: test"),
}


def _env(**extra: str) -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return offline_env(PYTHONPATH=path, **extra)


def test_every_entry_point_prints_hydra_help_and_exits_0(tmp_path):
    procs = {
        name: subprocess.Popen(
            [sys.executable, *args, "--help"],
            cwd=tmp_path,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (args, _, _) in ENTRY_POINTS.items()
    }
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name}: {err}"
        assert f"Usage: lungnet-{name}" in out and "== " in out, out  # the usage line, then Hydra's sections
        assert "ckpt" in out or "runs" in out or "data:" in out, out  # the options with their defaults
    assert not list(tmp_path.iterdir()), "--help must not create a run directory"


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_cfg_job_shows_the_composed_config_with_overrides(name, monkeypatch, capsys):
    _, override, shown = ENTRY_POINTS[name]
    run_cli(command_main(name), ["--cfg", "job", override], monkeypatch)
    out = capsys.readouterr().out
    assert shown in out and not out.startswith("hydra:") and "\nhydra:" not in out, out  # the job, no hydra node


def test_bad_command_line_is_one_line_and_exit_2(tmp_path, monkeypatch, caplog):
    for command, args, expected in [
        (command_main("evaluate"), ["ckpt=x", "bogus=2"], "bogus is not an option here"),
        (command_main("train"), ["data=mnist"], "data=mnist is not an option; choose one of: cxr4, darkcovidnet"),
        (command_main("export"), ["ckpt"], "cannot parse the command line: Error parsing override 'ckpt' (key=value"),
        (
            command_main("predict"),
            ["ckpt=x", "input=y", "explain.n=0"],
            "cannot set explain.n=0: a key above it is null",
        ),
    ]:
        caplog.clear()
        with pytest.raises(SystemExit) as exc:
            run_cli(command, [*args, f"paths.log_dir={tmp_path}"], monkeypatch)
        assert exc.value.code == 2
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and expected in errors[0] and "\n" not in errors[0], errors
        assert "Config search path" not in errors[0]  # Hydra's own appendix is cut
    assert not list(tmp_path.iterdir())


def test_an_in_process_run_leaves_the_logging_setup_as_it_found_it(tmp_path, monkeypatch):
    root = logging.getLogger()
    before = (root.handlers[:], root.level)
    with pytest.raises(SystemExit):
        run_cli(
            command_main("evaluate"), [f"ckpt={tmp_path / 'missing.ckpt'}", f"paths.log_dir={tmp_path}"], monkeypatch
        )
    assert (root.handlers, root.level) == before  # no handler left on a stream that closes with this test


def test_bad_command_line_in_a_real_process_exits_2_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "data=mnist"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "data=mnist is not an option" in proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_refused_calls_leave_no_run_folder(tmp_path, monkeypatch):
    out = tmp_path / "outputs"
    missing = tmp_path / "missing.ckpt"
    for command, args in [
        (command_main("evaluate"), [f"ckpt={missing}"]),
        (command_main("evaluate"), []),  # ckpt not given
        (command_main("predict"), [f"ckpt={missing}", f"input={tmp_path}"]),
        (command_main("compare"), [f"runs={tmp_path / 'nowhere'}"]),
        (command_main("train"), ["data=pneumonia", f"data.root={tmp_path / 'nowhere'}"]),
        (command_main("explain"), [f"ckpt={missing}"]),
        (command_main("audit"), [f"ckpt={missing}"]),
        (command_main("transfer"), [f"runs={tmp_path / 'nowhere'}"]),
        (command_main("loso"), [f"runs={tmp_path / 'nowhere'}"]),
    ]:
        with pytest.raises(SystemExit) as exc:
            run_cli(command, [*args, f"paths.log_dir={out}"], monkeypatch)
        assert exc.value.code == 2
        assert not out.exists(), f"{command.__name__} {args} left {sorted(out.rglob('*'))}"


def test_run_directory_may_use_hydra_interpolations(tmp_path, monkeypatch, capsys):
    """The check runs before Hydra's job starts, and still resolves ``${hydra:...}`` in the run directory."""
    out = tmp_path / "outputs"
    args = [f"ckpt={tmp_path / 'missing.ckpt'}", f"hydra.run.dir={out}/${{hydra:job.name}}"]
    with pytest.raises(SystemExit) as exc:
        run_cli(command_main("evaluate"), args, monkeypatch)
    assert exc.value.code == 2 and "missing.ckpt: not found" in "".join(capsys.readouterr())
    assert not out.exists()


def test_a_folder_that_existed_or_holds_run_files_is_never_removed(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    mine = tmp_path / "mine"
    mine.mkdir()  # empty, but the user's
    for folder in (run, mine):
        with pytest.raises(SystemExit) as exc:
            run_cli(
                command_main("evaluate"), [f"ckpt={tmp_path / 'missing.ckpt'}", f"hydra.run.dir={folder}"], monkeypatch
            )
        assert exc.value.code == 2 and folder.is_dir()
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == b"x"


def test_a_crash_leaves_no_run_folder_and_keeps_its_traceback(tmp_path, monkeypatch, capsys):
    @cli.hydra_app("evaluate")
    def crash(cfg, run_dir):
        raise RuntimeError("a bug, not a user error")

    out, ckpt = tmp_path / "outputs", tmp_path / "x.ckpt"
    ckpt.write_bytes(b"x")  # exists: the config-only checks (lungnet.commands.preflight) let it through to the task
    with pytest.raises(SystemExit) as exc:
        run_cli(crash, [f"ckpt={ckpt}", f"paths.log_dir={out}"], monkeypatch)
    assert exc.value.code == 1 and not out.exists()
    assert "RuntimeError: a bug, not a user error" in capsys.readouterr().err  # Hydra's report, as before


def test_unwritable_run_directory_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, caplog):
    """The check itself, with the disk's answer simulated (the real mounts are below)."""

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(args[0]))

    monkeypatch.setattr(lungnet_io, "open", full, raising=False)  # the probe write of lungnet.io.check_writable
    target = tmp_path / "a" / "b" / "run"
    with caplog.at_level(logging.ERROR, logger="lungnet"), pytest.raises(SystemExit) as exc:
        rundir.prepare_run_dir(target)
    assert exc.value.code == 2
    (message,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert str(target) in message and "No space left" in message and "hydra.run.dir=" in message
    assert not (tmp_path / "a").exists(), "the folders made for the check must go again"


def _unshare() -> list[str] | None:
    """A command prefix that runs in a private mount namespace where tmpfs can be mounted, or None."""
    if not shutil.which("unshare"):
        return None
    for prefix in (["unshare", "--user", "--map-root-user", "--mount"], ["unshare", "--mount"]):
        probe = subprocess.run([*prefix, "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
        if probe.returncode == 0:
            return prefix
    return None


@pytest.mark.parametrize("case", ["read-only", "full"])
def test_real_unwritable_run_directory_exits_2_with_one_line(tmp_path, case):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    evaluate = f"'{sys.executable}' '{ROOT / 'evaluate.py'}' ckpt=x 'hydra.run.dir={mnt}/run'"
    prefix = _unshare()
    if case == "read-only" and prefix is None and os.geteuid() != 0:
        mnt.chmod(0o555)  # without mounts, a read-only folder is what an unprivileged user gets
        command = ["sh", "-c", evaluate]
    elif prefix is None:
        pytest.skip("needs unshare with mount rights (a private tmpfs), or a non-root user for read-only")
    elif case == "read-only":
        command = [*prefix, "sh", "-c", f"mount -t tmpfs -o ro,size=64k tmpfs '{mnt}' && {evaluate}"]
    else:  # a tiny tmpfs, filled up
        fill = f"(head -c 1048576 /dev/zero > '{mnt}/fill' 2>/dev/null; true)"
        command = [*prefix, "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs '{mnt}' && {fill} && {evaluate}; "
                   f"rc=$?; ls -A '{mnt}'; exit $rc"]  # fmt: skip
    proc = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "Traceback" not in output
    reason = "Read-only file system|Permission denied" if case == "read-only" else "No space left on device"
    lines = [line for line in output.splitlines() if "Cannot write" in line]
    assert len(lines) == 1 and f"{mnt}/run" in lines[0] and "hydra.run.dir=" in lines[0], output
    assert any(r in lines[0] for r in reason.split("|")), lines
    if case == "full":
        assert "run" not in proc.stdout.split(), "the run folder made on the full disk must be removed"


def _copy_source(dest: Path) -> Path:
    dest.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("lungnet", "conf"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, dest / name)
    return dest


@pytest.mark.slow
def test_wheel_ships_the_configs_and_its_console_scripts_run_from_anywhere(tmp_path):
    """``pip wheel --no-deps .`` holds conf/**/*.yaml; a non-editable install's lungnet-train works elsewhere."""
    src, dist, site, elsewhere = _copy_source(tmp_path / "src"), tmp_path / "dist", tmp_path / "site", tmp_path / "x"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(src)]
    proc = subprocess.run(build, capture_output=True, text=True, timeout=600, env=_env(PIP_NO_INDEX="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = dist.glob("lungnet-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"lungnet/conf/{p.relative_to(ROOT / 'conf').as_posix()}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert configs and configs <= names, sorted(configs - names)
    assert "lungnet/conf/train.yaml" in names and "lungnet/conf/data/synthetic.yaml" in names
    install = [*pip, "install", "-q", "--no-deps", "--no-index", "--target", str(site), str(wheel)]
    assert subprocess.run(install, capture_output=True, timeout=600).returncode == 0
    elsewhere.mkdir()
    env = offline_env(PYTHONPATH=str(site))  # the installed copy, not this checkout
    script = site / "bin" / "lungnet-train"
    for args, expected in [(["--help"], "Usage: lungnet-train"), (["--info", "searchpath"], "pkg://lungnet.conf")]:
        proc = subprocess.run([str(script), *args], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and expected in proc.stdout, proc.stdout + proc.stderr
    assert not list(elsewhere.iterdir())


def test_a_diverged_trial_fails_alone_and_the_sweep_goes_on(tmp_path, monkeypatch):
    """-m optimizer.lr=100,0.01: the first trial diverges (one line, no metrics.json), the second trains."""
    from tests.conftest import TINY

    sweep = tmp_path / "sweep"
    args = ["-m", "optimizer=sgd", "optimizer.lr=100,0.01", f"hydra.sweep.dir={sweep}"]
    args += ["hydra.sweep.subdir=${hydra.job.num}", f"data.root={tmp_path / 'syn'}", "data.options.n_per_class=10"]
    run_cli(command_main("train"), [*args, *TINY], monkeypatch)  # no SystemExit: the sweep finished
    logs = "".join((sweep / str(k) / "train.log").read_text() for k in (0, 1))  # Hydra sets each job's logging
    errors = [line for line in logs.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and "] - TrainingDiverged: Training diverged: " in errors[0], errors
    assert not (sweep / "0" / "metrics.json").exists() and (sweep / "1" / "metrics.json").is_file()
