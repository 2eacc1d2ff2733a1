"""User-facing error types, at the bottom of the package so any layer can raise them.

`lungnet.commands.wrapper.run_safely` turns each into one logged line and exit status 2.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value that cannot work (unknown option, out of range); the message lists valid ones."""


class DataError(ValueError):
    """A data set that cannot be used as configured; the message says what to do."""


class CheckpointError(ValueError):
    """A checkpoint or exported model that cannot be used; the message says why."""


class TrainingDiverged(ConfigError):
    """Training whose loss or weights stopped being finite (or grew past the configured limit); the message names
    the epoch and step and the settings to try."""


class WriteError(OSError):
    """An output file that could not be written (disk full, read-only, no permission); names the file.

    Raised after the partial file was removed: what was written before stays as it was.
    """

    @classmethod
    def of(cls, path: object, exc: OSError, kept: str = "") -> WriteError:
        """``Could not write <path>: <reason>`` (+ what was kept), from the OSError the write raised."""
        reason = exc.strerror or str(exc)
        return cls(exc.errno, f"Could not write {path}: {reason}{'; ' + kept if kept else ''}")

    def __str__(self) -> str:
        return str(self.strerror)
