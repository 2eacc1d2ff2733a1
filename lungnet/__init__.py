"""lungnet: train, compare and explain chest X-ray lung-disease classifiers."""

from lungnet import schema as _schema  # noqa: F401 - registers the structured configs every entry point composes

__version__ = "0.1.0"
