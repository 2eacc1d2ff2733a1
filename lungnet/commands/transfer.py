"""``lungnet-transfer`` / ``python -m lungnet.evaluation.transfer``: the generalisation matrix of trained models over
data sets (``conf/transfer.yaml``)."""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lungnet.commands.wrapper import hydra_app


@hydra_app("transfer")
def main(cfg: DictConfig, run_dir: Path) -> dict:
    """Scores every model ``cfg.runs`` names on every data set (`lungnet.evaluation.generalisation.transfer`); the
    extra data sets of ``data=[a,b]`` are composed from ``conf/data`` here, where Hydra knows the command line."""
    from lungnet.evaluation.generalisation import transfer

    return transfer(cfg, run_dir, data_configs(list(HydraConfig.get().overrides.task)))


def data_names(task_overrides: list[str]) -> list[str]:
    """The data set names of a ``data=<name>`` or ``data=[a,b]`` command-line override (Hydra's own parser)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in OverridesParser.create().parse_overrides(list(task_overrides)):
        if override.key_or_group == "data" and not override.is_delete():
            value = override.value()
            return [value] if isinstance(value, str) else [str(v) for v in value]
    return []


def data_configs(task_overrides: list[str]) -> dict[str, dict]:
    """The composed ``conf/data/<name>.yaml`` of each name in ``data=[...]`` (``paths.*`` overrides applied)."""
    from hydra import compose

    paths = [o for o in task_overrides if o.startswith("paths.")]
    return {
        name: OmegaConf.to_container(
            compose(config_name="transfer", overrides=[f"data={name}", *paths]).data, resolve=True
        )
        for name in data_names(task_overrides)
    }


if __name__ == "__main__":
    main()
