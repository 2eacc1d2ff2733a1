"""Benchmarks and studies of lungnet, run as modules from the repository root (``python -m bench.render``)."""
