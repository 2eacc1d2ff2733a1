"""Entry-point glue: turn user mistakes into one readable message and a non-zero exit, never a traceback."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from lungnet.checkpoint import CheckpointError
from lungnet.data.images import ImageReadError
from lungnet.data.sources import DataError
from lungnet.models.registry import ModelError
from lungnet.models.weights import WeightsError

log = logging.getLogger("lungnet")

USER_ERRORS = (DataError, ModelError, WeightsError, CheckpointError, ImageReadError, FileNotFoundError)


def run_safely(fn: Callable, *args, **kwargs):
    """Calls ``fn``; a user error is logged as one clear message and exits with status 2."""
    try:
        return fn(*args, **kwargs)
    except USER_ERRORS as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        sys.exit(2)
