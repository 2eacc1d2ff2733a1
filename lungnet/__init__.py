"""lungnet: train, compare and explain chest X-ray lung-disease classifiers."""

__version__ = "0.1.0"
