"""User-facing error types, at the bottom of the package so any layer can raise them.

`lungnet.cli.run_safely` turns each into one logged line and exit status 2.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value that cannot work (unknown option, out of range); the message lists valid ones."""


class CheckpointError(ValueError):
    """A checkpoint or exported model that cannot be used; the message says why."""
