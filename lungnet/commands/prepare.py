"""``lungnet-prepare`` / ``python -m lungnet.prepare``: scans a data set into its manifest ahead of time
(``conf/prepare.yaml``)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lungnet.commands.wrapper import hydra_app
from lungnet.errors import ConfigError


@hydra_app("prepare")
def main(cfg: DictConfig, run_dir: Path) -> Path:
    """Scans ``cfg.data`` into its manifest (`lungnet.data.prepare.prepare`); returns the manifest's path."""
    from lungnet.data.prepare import prepare

    if OmegaConf.is_missing(cfg, "data"):
        raise ConfigError("lungnet-prepare needs a data set: data=<name> (a conf/data config), e.g. data=nih14")
    return prepare(OmegaConf.to_container(cfg.data, resolve=True), cfg.paths.get("cache_dir"))


if __name__ == "__main__":
    main()
