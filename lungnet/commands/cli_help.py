"""``--help`` of every command: its usage, the config groups it reads and its options with their defaults.

Hydra's own ``--help`` lists every group under the config root, for every command: ``evaluate.py --help`` showed
the training groups (callbacks, debug, hparams_search, experiment) and the schemas' ``_base`` entries, and listing
them took seconds. Here a command lists only the groups its own config's defaults list names (``conf/<name>.yaml``:
evaluate reads ``data``, ``explain`` and ``paths``), with their options but ``_``-prefixed ones, through the help
template the command's config chooses (``hydra.help.template``: Hydra's default, or ``conf/hydra/help/lungnet.yaml``).
Overrides on the command line show in the options, as with Hydra (``evaluate.py split=val --help``).
"""

from __future__ import annotations

import string
from importlib import resources
from pathlib import Path

import yaml
from omegaconf import OmegaConf, open_dict

HELP_FLAGS = ("--help", "-h")


def wants_help(args: list[str]) -> bool:
    """Whether a command line asks for the command's help (Hydra's ``--hydra-help`` is left to Hydra)."""
    return any(a in HELP_FLAGS for a in args)


def _group_dir(config_root: str, group: str):
    """The folder of a config group (a `Path`, or a resource folder inside the installed package)."""
    if config_root.startswith("pkg://"):
        return resources.files(config_root.removeprefix("pkg://")).joinpath(group)
    return Path(config_root, group)


def _read(config_root: str, name: str) -> str:
    if config_root.startswith("pkg://"):
        return resources.files(config_root.removeprefix("pkg://")).joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    return Path(config_root, f"{name}.yaml").read_text(encoding="utf-8")


def command_groups(config_root: str, config_name: str) -> dict[str, list[str]]:
    """The config groups ``conf/<config_name>.yaml`` names in its defaults list (but Hydra's own), each with its
    options (the group folder's YAML files, but ``_``-prefixed ones such as ``_base``); groups without options
    (an optional ``local`` not created) are left out."""
    defaults = (yaml.safe_load(_read(config_root, config_name)) or {}).get("defaults") or []
    groups: dict[str, list[str]] = {}
    for entry in defaults:
        if not isinstance(entry, dict):
            continue  # a schema or _self_
        for key in entry:
            words = str(key).split()
            if words[0] == "override" or words[-1].startswith(("hydra", "/")):
                continue
            folder = _group_dir(config_root, words[-1])
            options = [] if not folder.is_dir() else [p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")]
            options = sorted(o for o in options if not o.startswith("_"))
            if options:
                groups[words[-1]] = options
    return groups


def format_groups(groups: dict[str, list[str]]) -> str:
    """``group: a, b, c`` lines, in order of name."""
    return "".join(f"{group}: {', '.join(options)}\n" for group, options in sorted(groups.items()))


def help_text(config_root: str, config_name: str, args: list[str]) -> str:
    """The command's help: its config composed with the command line's overrides, through its help template.

    Raises:
        hydra.errors.HydraException, omegaconf.errors.OmegaConfBaseException: a bad override or group option
            (`lungnet.commands.wrapper` words them as one line).
    """
    from hydra import compose, initialize_config_dir, initialize_config_module
    from hydra.core.hydra_config import HydraConfig

    overrides = [a for a in args if not a.startswith("-")]
    if config_root.startswith("pkg://"):
        init = initialize_config_module(config_module=config_root.removeprefix("pkg://"), version_base="1.3")
    else:
        init = initialize_config_dir(config_dir=str(Path(config_root).absolute()), version_base="1.3")
    with init:
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        template = string.Template(str(cfg.hydra.help.template))
        with open_dict(cfg):
            del cfg["hydra"]
        return template.safe_substitute(
            APP_CONFIG_GROUPS=format_groups(command_groups(config_root, config_name)),
            HYDRA_CONFIG_GROUPS="(python <command> --hydra-help lists them)\n",
            FLAGS_HELP="--help, -h : this help; --hydra-help : Hydra's own; --cfg job : the composed config\n",
            CONFIG=OmegaConf.to_yaml(cfg, resolve="--resolve" in args),
        )
