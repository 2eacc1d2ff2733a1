"""The run directory's lock (`lungnet.commands.rundir.lock_run_dir`): a second command on a directory in use is one line
naming the PID that holds it and exit 2, before it writes anything; a dead process's lock is taken over."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lungnet.commands import rundir
from tests.conftest import ROOT, TINY, command_main, offline_env, run_cli

# a second process that takes the run directory's lock the way a command does, and keeps it until killed
HOLD = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from lungnet.commands.rundir import lock_run_dir\n"
    "lock_run_dir(Path(sys.argv[1]))\n"
    "print('locked', flush=True)\n"
    "time.sleep(120)\n"
)


@pytest.fixture
def held(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A run directory whose lock another live process holds, and that process's PID."""
    run = tmp_path / "run"
    run.mkdir()
    env = offline_env(PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield run, proc.pid
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_a_second_training_in_a_run_directory_in_use_is_refused_before_writing(held, monkeypatch, capsys):
    """The issue's case: two trainings with the same hydra.run.dir; the second writes nothing there."""
    run, pid = held
    before = sorted(run.iterdir())
    with pytest.raises(SystemExit) as exc:
        run_cli(command_main("train"), [*TINY, f"hydra.run.dir={run}"], monkeypatch)
    assert exc.value.code == 2
    out = capsys.readouterr()
    (message,) = [line for line in (out.out + out.err).splitlines() if line.strip()]
    assert f"run directory {run} in use by PID {pid}" in message and "hydra.run.dir=<folder>" in message
    assert sorted(run.iterdir()) == before  # no .hydra/, no train.log: the first run's files stay its own
    assert rundir._locks == {}


def test_other_ranks_of_a_multi_process_run_share_rank_0s_lock(held, monkeypatch):
    run, _ = held
    monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP child Lightning started in rank 0's run directory
    rundir.lock_run_dir(run)
    assert rundir._locks == {}


def test_the_lock_of_a_dead_process_is_taken_over_and_released(tmp_path, caplog):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / rundir.LOCK_NAME).write_text(f"{dead.pid}\n")  # left by a kill -9
    with caplog.at_level(logging.INFO, logger="lungnet"):
        rundir.lock_run_dir(run)
    try:
        assert (run / rundir.LOCK_NAME).read_text() == f"{os.getpid()}\n"
        assert f"left by PID {dead.pid}, which no longer holds it" in caplog.text
    finally:
        rundir.release_run_dirs()
    assert not (run / rundir.LOCK_NAME).exists() and rundir._locks == {}


def test_a_command_run_in_process_lets_go_of_its_run_directory(tmp_path, monkeypatch):
    """A refused call (a missing checkpoint) releases the lock; the folder, which existed, stays without it."""
    run = tmp_path / "mine"
    run.mkdir()
    for _ in range(2):  # the second call finds the directory free again
        with pytest.raises(SystemExit) as exc:
            run_cli(
                command_main("evaluate"), [f"ckpt={tmp_path / 'missing.ckpt'}", f"hydra.run.dir={run}"], monkeypatch
            )
        assert exc.value.code == 2 and rundir._locks == {}
        assert not (run / rundir.LOCK_NAME).exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"4242\n", "PID 4242"),
        (b"", "another process"),
        (b"abc", "another process"),
        (b"-5\n", "another process"),
        (b"0\n", "another process"),
        (b"99999999999\n", "another process"),
        (b"\xff\xfe", "another process"),
    ],
)
def test_a_lock_file_is_read_as_untrusted_input(tmp_path, content, expected):
    lock = tmp_path / rundir.LOCK_NAME
    lock.write_bytes(content)
    fd = os.open(lock, os.O_RDONLY)
    try:
        assert rundir.lock_holder(fd, lock).startswith(expected)
    finally:
        os.close(fd)
