"""Accuracy and method studies: ``python -m bench.studies.<name> --help``."""
