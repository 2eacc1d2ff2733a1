"""Datasets, image reading, splits and the DataModule."""
