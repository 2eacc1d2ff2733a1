"""Command-line entry points: every lungnet command is a Hydra app (``--help``, ``--cfg job``, ``key=value``).

=================  ==========================================  ======================
console script     same as                                     config
=================  ==========================================  ======================
lungnet-train      ``python train.py``                         ``conf/train.yaml``
lungnet-evaluate   ``python evaluate.py``                      ``conf/evaluate.yaml``
lungnet-predict    ``python predict.py``                       ``conf/predict.yaml``
lungnet-compare    ``python compare.py``                       ``conf/compare.yaml``
lungnet-app        ``python -m lungnet.app``                   ``conf/app.yaml``
lungnet-export     ``python -m lungnet.export``                ``conf/export.yaml``
lungnet-explain    ``python -m lungnet.explain``               ``conf/explain.yaml``
lungnet-crossval   ``python -m lungnet.evaluation.crossval``   ``conf/crossval.yaml``
lungnet-audit      ``python -m lungnet.audit``                 ``conf/audit.yaml``
lungnet-transfer   ``python -m lungnet.evaluation.transfer``   ``conf/transfer.yaml``
lungnet-prepare    ``python -m lungnet.prepare``               ``conf/prepare.yaml``
=================  ==========================================  ======================

The configs are the repository's ``conf/`` in a source checkout, and the same files shipped inside the wheel as
``lungnet.conf`` (``pkg://lungnet.conf``) after ``pip install``.

``--help`` lists the groups a command reads and its options (`lungnet.commands.cli_help`). Each job first runs the
command's
config-only checks (`lungnet.commands.preflight`: split names, model names, paths the command line names, ranges),
before
torch, Lightning or timm load and before the task writes a file.

A user mistake ends with one logged line and exit status 2, never a traceback: a bad value found by the code
(`run_safely`, the error types of `lungnet.errors` and the data/model modules), a bad command line found by
Hydra (unknown key, malformed override, missing config), a run directory that cannot be written (read-only,
full disk: `lungnet.commands.rundir.RunDirGuard`, before Hydra writes into it) or that another command is writing into
(its
lock, released when the command ends: `lungnet.commands.rundir.lock_run_dir`). A refused or failed call leaves no run
directory behind when it wrote nothing there but Hydra's own ``.hydra/`` and log
(`lungnet.commands.rundir.remove_stray_run_dir`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lungnet.commands.preflight import check_command
from lungnet.commands.rundir import WRITE_ERRNOS, release_run_dirs, remove_stray_run_dir, write_error_message
from lungnet.errors import CheckpointError, ConfigError, DataError, WriteError
from lungnet.io import printable

log = logging.getLogger("lungnet")

PACKAGE = Path(__file__).resolve().parents[1]  # lungnet/


def config_path() -> str:
    """The configs: inside the installed package (``pkg://lungnet.conf``), else the checkout's ``conf/``."""
    if (PACKAGE / "conf").is_dir():
        return "pkg://lungnet.conf"
    return str(PACKAGE.parent / "conf")


def load_config(name: str) -> DictConfig:
    """One config file by its path under the config root, e.g. ``explain/gradcam`` (wherever the configs are)."""
    root = config_path()
    if root.startswith("pkg://"):
        from importlib import resources

        text = resources.files("lungnet.conf").joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    else:
        text = Path(root, f"{name}.yaml").read_text(encoding="utf-8")
    return OmegaConf.create(text)


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean a user mistake.

    Evaluated when an exception reaches `run_safely`. The error types of the heavy modules (the image reader, the
    model factory) are taken only from modules already imported: an exception of a module not loaded cannot have
    been raised, and a refusal found early (`lungnet.commands.preflight`) stays fast.
    """
    from hydra.errors import InstantiationException
    from omegaconf.errors import MissingMandatoryValue

    loaded = [getattr(sys.modules[m], name) for m, name in _HEAVY_ERRORS if m in sys.modules]
    return (
        ConfigError,
        DataError,
        *loaded,
        CheckpointError,
        FileNotFoundError,
        MissingMandatoryValue,
        InstantiationException,
        WriteError,
    )


# user-error types defined in modules that import torch, timm or image libraries: (module, class name)
_HEAVY_ERRORS = (
    ("lungnet.models.registry", "ModelError"),
    ("lungnet.models.weights", "WeightsError"),
    ("lungnet.data.images", "ImageReadError"),
)


class PrintableFilter(logging.Filter):
    """Escapes undecodable file-name bytes in log records, which would otherwise break file handlers."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        safe = printable(message)
        if safe != message:
            record.msg, record.args = safe, None
        return True


def install_printable_filter() -> None:
    """Adds `PrintableFilter` to every handler of the root logger (Hydra's console and file handlers)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, PrintableFilter) for f in handler.filters):
            handler.addFilter(PrintableFilter())


def user_error_message(exc: BaseException) -> str:
    """The one line a user error is reported as."""
    from omegaconf.errors import MissingMandatoryValue

    if isinstance(exc, MissingMandatoryValue) and getattr(exc, "full_key", None):
        return f"MissingMandatoryValue: {exc.full_key}=<value> is required (--help lists the options)"
    return f"{type(exc).__name__}: {printable(exc)}"


def run_safely(fn: Callable, *args, **kwargs):
    """Calls ``fn``; a user error is logged as one clear message and exits with status 2."""
    install_printable_filter()
    try:
        return fn(*args, **kwargs)
    except user_errors() as exc:
        log.error("%s", user_error_message(exc))
        sys.exit(2)
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        log.error("%s", write_error_message(exc))
        sys.exit(2)


def hydra_app(config_name: str) -> Callable[[Callable[[DictConfig, Path], Any]], Callable[[], Any]]:
    """Turns ``task(cfg, run_dir)`` into a Hydra command line on ``conf/<config_name>.yaml``.

    The returned function (a console script) parses ``sys.argv``; ``.task`` is the plain function, for tests and
    notebooks that compose their own config.
    """

    def wrap(task: Callable[[DictConfig, Path], Any]) -> Callable[[], Any]:
        started = []

        def job(cfg: DictConfig) -> Any:
            started.append(True)
            _restore_hydra_full_error()
            run_dir = Path(HydraConfig.get().runtime.output_dir)
            try:
                run_safely(check_command, config_name, cfg)  # before anything heavy loads or a file is written
                return run_safely(task, cfg, run_dir)
            except BaseException:
                remove_stray_run_dir(run_dir)
                raise

        main = hydra.main(version_base="1.3", config_path=config_path(), config_name=config_name)(job)

        @functools.wraps(task)
        def entry() -> Any:
            started.clear()
            try:
                with _logging_restored():
                    return _run_reporting_command_line_errors(main, started, config_name)
            finally:
                release_run_dirs()

        entry.task = task
        return entry

    return wrap


@contextlib.contextmanager
def _logging_restored() -> Iterator[None]:
    """Gives the root logger its handlers and level back after a command (Hydra configures logging globally):
    a command run in-process, from a notebook or a test, leaves no handler on a stream that may close later."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


_FULL_ERROR = "HYDRA_FULL_ERROR"
_saved_full_error: list[str | None] = []


def _restore_hydra_full_error() -> None:
    """Gives the task Hydra's usual error reporting back (set for the composition only)."""
    while _saved_full_error:
        value = _saved_full_error.pop()
        if value is None:
            os.environ.pop(_FULL_ERROR, None)
        else:
            os.environ[_FULL_ERROR] = value


def _run_reporting_command_line_errors(main: Callable[[], Any], started: list, config_name: str) -> Any:
    """Runs a Hydra main, or prints the command's help (`lungnet.commands.cli_help`, for ``--help``); an error before
    the task
    starts (composition, overrides) is one line and exit 2.

    Hydra reports those itself with exit status 1; ``HYDRA_FULL_ERROR=1`` makes it raise them instead, and only
    until the task starts, so a crash inside the task is still reported the way Hydra does. `lungnet.commands.launch`
    words the line (the key, its value and what it accepts, or a renamed key's new name) and, for train, replays
    a run's own overrides on ``resume=<run dir>``.
    """
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from lungnet.commands.cli_help import help_text, wants_help
    from lungnet.commands.launch import check_null_groups, check_paths_override, config_error_line, replay_resume

    try:
        check_paths_override(sys.argv[1:])
        check_null_groups(sys.argv[1:], config_path())
        if config_name == "train":
            sys.argv = replay_resume(sys.argv, config_path())
    except ConfigError as exc:
        _refuse(str(exc))
    _saved_full_error.append(os.environ.get(_FULL_ERROR))
    os.environ[_FULL_ERROR] = "1"
    try:
        if wants_help(sys.argv[1:]):
            print(help_text(config_path(), config_name, sys.argv[1:]))  # noqa: T201 - the help is the output
            return None
        return main()
    except (HydraException, OmegaConfBaseException) as exc:
        if started:
            raise
        _refuse(config_error_line(exc))
    except AssertionError:  # OmegaConf's answer to a key set below a null node (explain.n=4 where explain is null)
        if started:
            raise
        dotted = [a for a in sys.argv[1:] if "." in a.split("=", 1)[0] and not a.startswith(("hydra.", "paths."))]
        _refuse(
            f"cannot set {', '.join(dotted) or 'an override'}: a key above it is null in this command's config; "
            "choose the group first (e.g. explain=gradcam explain.n=4)"
        )
    finally:
        _restore_hydra_full_error()
        GlobalHydra.instance().clear()


def _refuse(message: str) -> None:
    """Logs a command-line mistake as one line (``--help`` named) and exits with status 2."""
    logging.basicConfig(format="[%(levelname)s] %(message)s")
    log.error("ConfigError: %s (--help lists the keys and groups)", " ".join(message.split()))
    sys.exit(2)
