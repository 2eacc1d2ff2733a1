"""The run directory of a command: checked before Hydra writes into it, removed again when a call wrote nothing.

`RunDirGuard` (a Hydra callback, ``hydra.callbacks.run_dir_guard`` in the configs) creates the run or sweep
directory and writes a probe file before Hydra's own ``.hydra/`` and log: a read-only folder, a missing permission,
a full disk or quota is one logged line naming the folder and what to do, and exit status 2. It records which
folders it created, so that `remove_stray_run_dir` removes, after a refused or failed call, only a directory this
call made and that holds nothing but Hydra's files. It then locks the directory (`lock_run_dir`): a second command
writing into a directory in use is refused in one line naming the PID that holds it, before it writes anything.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lungnet.io import check_writable, printable

log = logging.getLogger("lungnet")

# errnos that mean "this place cannot be written": the user's to fix (another folder, free space), not a bug
WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}
_UNKNOWN = object()
_created: dict[str, Path | None] = {}  # run dir -> the topmost folder this call created for it (None: existed)
LOCK_NAME = ".lungnet.lock"  # in a run directory while a command writes there: the PID of that command
_locks: dict[str, int] = {}  # run dir -> the open, locked lock file this process holds


def write_error_message(exc: OSError, where: Path | str | None = None, key: str = "hydra.run.dir") -> str:
    """One line for a place that cannot be written (or read, for a permission error): path, why, what to do."""
    path = printable(exc.filename or where or "")
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"Cannot write {path}: {reason}; free some space, or write elsewhere with {key}=<folder on another disk>"
    verb = "write" if where is not None or exc.errno == errno.EROFS else "access"
    return f"Cannot {verb} {path}: {reason}; check its permissions, or write elsewhere with {key}=<writable folder>"


def _topmost_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (None: ``path`` exists)."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def _remove_empty(folder: Path, stop: Path) -> None:
    """Removes ``folder`` and its empty parents up to and including ``stop`` (never a non-empty one)."""
    while True:
        try:
            folder.rmdir()
        except OSError:
            return
        if folder == stop or stop not in folder.parents:
            return
        folder = folder.parent


def prepare_run_dir(path: Path, key: str = "hydra.run.dir") -> None:
    """Creates ``path`` and writes a probe file in it, before Hydra writes its config there.

    Records which folders this call created (`remove_stray_run_dir` removes only those). A folder that cannot
    be written (read-only, no permission, full disk or quota) is one logged line naming it, and exit status 2.
    """
    path = path.absolute()
    created = _topmost_missing(path)
    try:
        check_writable(path)
    except OSError as exc:
        if created is not None:
            _remove_empty(path, created)
        log.error("%s", write_error_message(exc, path, key))
        sys.exit(2)
    _created[str(path)] = created


def lock_run_dir(path: Path, key: str = "hydra.run.dir") -> None:
    """Takes the run directory's lock (`LOCK_NAME`, holding this process's PID) before Hydra writes there.

    A second command on a directory in use is one logged line naming the PID that holds it, and exit status 2;
    the lock of a process that died (kill -9, a crash) is taken over: the operating system released it. The
    other ranks of a multi-process run (DDP) share rank 0's directory and lock. `release_run_dirs` lets go.
    """
    path = path.absolute()
    if str(path) in _locks or secondary_rank():
        return
    lock = path / LOCK_NAME
    try:
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = lock_holder(fd, lock)
                os.close(fd)
                message = "run directory %s in use by %s: wait for it to end, or choose another with %s=<folder>"
                log.error(message, printable(path), holder, key)
                sys.exit(2)
            if _same_file(fd, lock):  # not removed by a holder letting go between our open and our lock
                break
            os.close(fd)
        stale = lock_holder(fd, lock)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:
        log.error("%s", write_error_message(exc, path, key))
        sys.exit(2)
    if stale.startswith("PID "):
        log.info("Took over the lock of %s, left by %s, which no longer holds it", printable(path), stale)
    _locks[str(path)] = fd


def lock_holder(fd: int, lock: Path) -> str:
    """``PID <n>`` from a lock file (untrusted: a positive integer or nothing), else what it holds in words."""
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 32).decode("ascii", errors="replace").strip()
    if text.isdigit() and 0 < int(text) < 2**31:
        return f"PID {int(text)}"
    return f"another process ({lock} holds no PID)"


def _same_file(fd: int, path: Path) -> bool:
    opened = os.fstat(fd)
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    return (opened.st_dev, opened.st_ino) == (named.st_dev, named.st_ino)


def secondary_rank() -> bool:
    """Whether this process is a rank other than 0 of a multi-process run (Lightning's DDP children, torchrun, srun)."""
    return any(os.environ.get(name, "0").strip() not in ("", "0") for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


def release_run_dirs() -> None:
    """Lets go of every run directory lock this process holds (`lock_run_dir`), removing the lock files, and forgets
    which folders the call created (a later call in this process, a test or a notebook, starts afresh)."""
    _created.clear()
    while _locks:
        path, fd = _locks.popitem()
        lock = Path(path) / LOCK_NAME
        if _same_file(fd, lock):
            lock.unlink()
        os.close(fd)


class RunDirGuard(Callback):
    """Hydra callback (``hydra.callbacks`` in the configs): checks and locks the run or sweep directory before Hydra
    writes there."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = Path(str(_select(config, "hydra.run.dir")))
        prepare_run_dir(run_dir)
        lock_run_dir(run_dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(_select(config, "hydra.sweep.dir")))
        prepare_run_dir(sweep_dir, key="hydra.sweep.dir")
        lock_run_dir(sweep_dir, key="hydra.sweep.dir")


def _select(config: DictConfig, key: str) -> Any:
    from omegaconf.errors import OmegaConfBaseException

    HydraConfig.instance().set_config(config)  # as run_job does next: ${hydra:job.override_dirname} and the like
    try:
        return OmegaConf.select(config, key, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        log.error("%s cannot be resolved: %s", key, " ".join(str(exc).split()))
        sys.exit(2)


def remove_stray_run_dir(run_dir: Path) -> bool:
    """Removes the run directory of a refused or failed call when it holds nothing but Hydra's own files.

    Only what this call created goes: a folder that existed before (a resumed run, a folder the user named), one
    `RunDirGuard` did not prepare (the working directory of the commands that write no run directory: app,
    export, crossval) but a job's folder in a sweep directory this call created, is never removed, nor one with
    any other file in it; empty parents this call created (``outputs/eval/<date>``)
    go with it. Returns True when something was removed.
    """
    run_dir = run_dir.absolute()
    created = _created.get(str(run_dir), _UNKNOWN)
    if created is _UNKNOWN:  # not prepared by RunDirGuard: a job of a sweep this call created, or not lungnet's
        created = run_dir if _in_created_sweep(run_dir) else None
    if created is None or not run_dir.is_dir():
        return False
    hydra_cfg = HydraConfig.get()
    own = {f"{hydra_cfg.job.name}.log", LOCK_NAME, *([hydra_cfg.output_subdir] if hydra_cfg.output_subdir else [])}
    if any(p.name not in own for p in run_dir.iterdir()):
        return False
    try:
        shutil.rmtree(run_dir)
    except OSError as exc:
        log.warning("Could not remove the empty run directory %s: %s", run_dir, exc)
        return False
    if isinstance(created, Path) and created != run_dir:
        _remove_empty(run_dir.parent, created)
    log.info("Removed %s: this call wrote nothing there but Hydra's config and log", run_dir)
    return True


def _in_created_sweep(run_dir: Path) -> bool:
    """Whether ``run_dir`` lies below a sweep (or run) directory that this call created (`prepare_run_dir`)."""
    return any(created is not None and Path(path) in run_dir.parents for path, created in _created.items())
