"""Entry-point glue: turn user mistakes into one readable message and a non-zero exit, never a traceback."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from lungnet.data.images import ImageReadError
from lungnet.data.sources import DataError
from lungnet.errors import CheckpointError, ConfigError, WriteError
from lungnet.io import printable
from lungnet.models.registry import ModelError
from lungnet.models.weights import WeightsError

log = logging.getLogger("lungnet")


USER_ERRORS = (
    ConfigError,
    DataError,
    ModelError,
    WeightsError,
    CheckpointError,
    ImageReadError,
    FileNotFoundError,
    MissingMandatoryValue,
    InstantiationException,
    WriteError,
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


def run_safely(fn: Callable, *args, **kwargs):
    """Calls ``fn``; a user error is logged as one clear message and exits with status 2."""
    install_printable_filter()
    try:
        return fn(*args, **kwargs)
    except USER_ERRORS as exc:
        log.error("%s: %s", type(exc).__name__, printable(exc))
        sys.exit(2)


def parse_key_values(argv: list[str] | None, defaults: dict, usage: str, required: tuple[str, ...] = ()) -> DictConfig:
    """``key=value`` command-line arguments merged over ``defaults`` (the small module entry points).

    Unknown keys or a missing required key log ``usage`` (with the offending keys) and exit with status 2.
    """
    cli = OmegaConf.from_dotlist(list(sys.argv[1:] if argv is None else argv))
    unknown = sorted(set(cli) - set(defaults))
    missing = [k for k in required if cli.get(k) is None]
    if unknown or missing:
        hint = f" (unknown keys: {', '.join(unknown)})" if unknown else f" (missing: {', '.join(missing)})"
        log.error("usage: %s%s", usage, hint)
        sys.exit(2)
    return OmegaConf.merge(defaults, cli)
