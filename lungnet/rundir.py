"""The run directory of a command: checked before Hydra writes into it, removed again when a call wrote nothing.

`RunDirGuard` (a Hydra callback, ``hydra.callbacks.run_dir_guard`` in the configs) creates the run or sweep
directory and writes a probe file before Hydra's own ``.hydra/`` and log: a read-only folder, a missing permission,
a full disk or quota is one logged line naming the folder and what to do, and exit status 2. It records which
folders it created, so that `remove_stray_run_dir` removes, after a refused or failed call, only a directory this
call made and that holds nothing but Hydra's files.
"""

from __future__ import annotations

import errno
import logging
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


class RunDirGuard(Callback):
    """Hydra callback (``hydra.callbacks`` in the configs): checks the run or sweep directory before Hydra writes."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        prepare_run_dir(Path(str(_select(config, "hydra.run.dir"))))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        prepare_run_dir(Path(str(_select(config, "hydra.sweep.dir"))), key="hydra.sweep.dir")


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

    Only what this call created goes: a folder that existed before (a resumed run, a folder the user named)
    is never removed, nor one with any other file in it; empty parents this call created (``outputs/eval/<date>``)
    go with it. Returns True when something was removed.
    """
    run_dir = run_dir.absolute()
    created = _created.get(str(run_dir), _UNKNOWN)
    if created is None or not run_dir.is_dir():
        return False
    hydra_cfg = HydraConfig.get()
    own = {f"{hydra_cfg.job.name}.log", *([hydra_cfg.output_subdir] if hydra_cfg.output_subdir else [])}
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
