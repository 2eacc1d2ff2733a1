"""``prepare.yaml``: `PrepareConfig`, the options of ``lungnet-prepare``."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from lungnet.schema.fields import opt
from lungnet.schema.train import DataConfig, PathsConfig


@dataclass
class PrepareConfig:
    """``lungnet-prepare data=<name>``: the data set to scan and where its manifest goes (``paths.cache_dir``)."""

    data: DataConfig = MISSING
    paths: PathsConfig = opt(factory=PathsConfig)
