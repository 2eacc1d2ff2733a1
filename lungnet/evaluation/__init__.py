"""Evaluation: predictions over a split, metrics, plots and reports."""
