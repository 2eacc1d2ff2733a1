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

``--help`` lists the groups a command reads and its options (`lungnet.cli_help`). Each job first runs the command's
config-only checks (`lungnet.preflight`: split names, model names, paths the command line names, ranges), before
torch, Lightning or timm load and before the task writes a file.

A user mistake ends with one logged line and exit status 2, never a traceback: a bad value found by the code
(`run_safely`, the error types of `lungnet.errors` and the data/model modules), a bad command line found by
Hydra (unknown key, malformed override, missing config), a run directory that cannot be written (read-only,
full disk: `lungnet.rundir.RunDirGuard`, before Hydra writes into it) or that another command is writing into (its
lock, released when the command ends: `lungnet.rundir.lock_run_dir`). A refused or failed call leaves no run
directory behind when it wrote nothing there but Hydra's own ``.hydra/`` and log
(`lungnet.rundir.remove_stray_run_dir`).
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

from lungnet.errors import CheckpointError, ConfigError, DataError, WriteError
from lungnet.io import printable
from lungnet.preflight import check_command, optimized_value
from lungnet.rundir import WRITE_ERRNOS, release_run_dirs, remove_stray_run_dir, write_error_message

log = logging.getLogger("lungnet")

PACKAGE = Path(__file__).resolve().parent


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
    been raised, and a refusal found early (`lungnet.preflight`) stays fast.
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
    """Runs a Hydra main, or prints the command's help (`lungnet.cli_help`, for ``--help``); an error before the task
    starts (composition, overrides) is one line and exit 2.

    Hydra reports those itself with exit status 1; ``HYDRA_FULL_ERROR=1`` makes it raise them instead, and only
    until the task starts, so a crash inside the task is still reported the way Hydra does. `lungnet.launch`
    words the line (the key, its value and what it accepts, or a renamed key's new name) and, for train, replays
    a run's own overrides on ``resume=<run dir>``.
    """
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from lungnet.cli_help import help_text, wants_help
    from lungnet.launch import check_null_groups, check_paths_override, config_error_line, replay_resume

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


@hydra_app("train")
def train(cfg: DictConfig, run_dir: Path) -> float | None:
    """Trains a model (`lungnet.training.train`); returns the metric ``optimized_metric`` names (``val/auroc_macro``
    unless a sweep's preset says otherwise) for sweepers.

    In a sweep, a trial whose training diverged is its one logged line and no value (Optuna records a failed trial);
    the other trials go on. A single run exits with status 2.
    """
    from hydra.types import RunMode

    from lungnet.errors import TrainingDiverged
    from lungnet.training import train as fit

    try:
        results = fit(cfg, run_dir)
    except TrainingDiverged as exc:
        if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
            raise
        log.error("%s", user_error_message(exc))
        return None
    return optimized_value(results, cfg.optimized_metric)


@hydra_app("evaluate")
def evaluate(cfg: DictConfig, run_dir: Path) -> dict:
    """Evaluates a checkpoint (`lungnet.evaluation.run.evaluate`)."""
    from lungnet.evaluation.run import evaluate as run

    return run(cfg, run_dir)


@hydra_app("predict")
def predict(cfg: DictConfig, run_dir: Path) -> Path:
    """Classifies image files (`lungnet.batch.run_batch`)."""
    from lungnet.batch import run_batch

    return run_batch(cfg, run_dir)


@hydra_app("compare")
def compare(cfg: DictConfig, run_dir: Path) -> Any:
    """Compares checkpoints on the same images (`lungnet.evaluation.compare.compare`)."""
    from lungnet.evaluation.compare import compare as run

    return run(cfg, run_dir)


@hydra_app("app")
def app(cfg: DictConfig, run_dir: Path) -> None:
    """Serves the web page and HTTP API (`lungnet.app.serve`)."""
    from lungnet.app import serve

    serve(cfg)


@hydra_app("export")
def export(cfg: DictConfig, run_dir: Path) -> Path:
    """Exports a checkpoint to ONNX (fp32, int8) or TorchScript beside it (`lungnet.export.export`)."""
    from lungnet.export import export as run

    if not isinstance(cfg.ckpt, str):
        raise ConfigError(f"ckpt={cfg.ckpt}: export takes one checkpoint; export an ensemble's members one by one")
    return run(
        cfg.ckpt,
        str(cfg.format),
        cfg.out,
        opset=int(cfg.opset),
        verify=bool(cfg.verify),
        int8=bool(cfg.int8),
        calib=cfg.calib,
        calib_n=int(cfg.calib_n),
        min_agreement=float(cfg.min_agreement),
        int8_weights=str(cfg.int8_weights),
    )


def explain_options(method: str, options: DictConfig | dict | None = None) -> dict:
    """A method's options from ``conf/explain/<method>.yaml`` with the set (non-null) ``options`` over them."""
    from lungnet.explain.base import ExplainError
    from lungnet.explain.cams import list_methods

    if method not in list_methods():
        raise ExplainError(f"Unknown method '{method}'; choose from {', '.join(list_methods())}")
    given = {k: v for k, v in (options or {}).items() if v is not None}
    merged = OmegaConf.merge(load_config(f"explain/{method}").get("options") or {}, given)
    return OmegaConf.to_container(merged, resolve=True)


@hydra_app("explain")
def explain(cfg: DictConfig, run_dir: Path) -> dict:
    """Explains (and optionally scores) a checkpoint's heatmaps (`lungnet.explain.command.run`)."""
    from lungnet.explain.command import run

    listed = cfg.methods if OmegaConf.is_list(cfg.methods) else str(cfg.methods).split(",")  # or 'a,b', quoted
    methods = [str(m).strip() for m in listed if str(m).strip()] if cfg.score != "none" else []
    return run(cfg, run_dir, explain_options(str(cfg.method), cfg.options), {m: explain_options(m) for m in methods})


@hydra_app("crossval")
def crossval(cfg: DictConfig, run_dir: Path) -> Path:
    """Summarises a k-fold multirun (`lungnet.evaluation.crossval.run`)."""
    from lungnet.evaluation.crossval import run

    return run(cfg)


@hydra_app("audit")
def audit(cfg: DictConfig, run_dir: Path) -> dict:
    """Shortcut audit of a checkpoint (`lungnet.audit.audit`)."""
    from lungnet.audit import audit as run

    return run(cfg, run_dir)


@hydra_app("transfer")
def transfer(cfg: DictConfig, run_dir: Path) -> dict:
    """Generalisation matrix of trained models over data sets (`lungnet.evaluation.transfer.transfer`); the extra
    data sets of ``data=[a,b]`` are composed from ``conf/data`` here, where Hydra knows the command line."""
    from lungnet.evaluation.transfer import data_configs
    from lungnet.evaluation.transfer import transfer as run

    return run(cfg, run_dir, data_configs(list(HydraConfig.get().overrides.task)))


@hydra_app("prepare")
def prepare(cfg: DictConfig, run_dir: Path) -> Path:
    """Scans a data set into its manifest ahead of time (`lungnet.prepare.prepare`)."""
    from lungnet.prepare import prepare as run

    if OmegaConf.is_missing(cfg, "data"):
        raise ConfigError("lungnet-prepare needs a data set: data=<name> (a conf/data config), e.g. data=nih14")
    return run(OmegaConf.to_container(cfg.data, resolve=True), cfg.paths.get("cache_dir"))
