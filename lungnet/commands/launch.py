"""What a command line means before Hydra composes it, and what its mistakes are called.

Hydra refuses a value the schema (`lungnet.schema`) does not accept, an unknown group option or an override it
cannot parse while composing, before it writes anything, but reports it over several lines with exit status 1.
`config_error_line` words those as one line naming the key and what it accepts (`lungnet.commands.wrapper` logs it and
exits
2, like `lungnet.commands.wrapper.run_safely` does for the mistakes found later). For ``train`` `replay_resume`
replays a
run's own overrides on ``resume=<run dir>``, so a run continues with the settings it started with: only those that
set train's schema keys and config-group choices (a run directory is untrusted input, code-like as a config is),
all of them with ``resume.trust_overrides=true``.

Light on imports on purpose: it runs before anything heavy is loaded (``--help`` stays fast).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import yaml
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_config_search_path
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lungnet.config_checks import describe, in_schema
from lungnet.errors import ConfigError
from lungnet.schema import RENAMED, SCHEMAS, TrainConfig

log = logging.getLogger("lungnet")

# settings a resumed run may change: where and how fast it runs, and for how long (not what it trains)
SAFE_ON_RESUME = (
    "trainer.max_epochs",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "data.root",
    "data.num_workers",
    "data.persistent_workers",
    "data.pin_memory",
    "data.cache",
    "data.cache_dir",
    "paths.data_root",
    "log_figures_every",
)
# resume=<run dir> replays only what the train schema and the config groups allow, unless the command line says this
TRUST_KEY = "resume.trust_overrides"
# resolvers a replayed value may call (oc.decode and oc.create would build a config, _target_ and all, from a string)
RESOLVERS_ON_REPLAY = ("oc.env", "hydra", "now")
_RESERVED = re.compile(r"^_.*_$")  # Hydra's own keys: _target_, _args_, _partial_, _recursive_, _convert_


def config_error_line(exc: BaseException) -> str:
    """One line for a composition error: the key, the value, and what the key accepts (or its new name)."""
    cause = exc.__cause__ if isinstance(exc.__cause__, OmegaConfBaseException) else exc
    key = getattr(cause, "full_key", None) or ""
    match = re.search(r"override '([^']+)'", str(exc))
    override = match.group(1) if match else key
    renamed = renamed_hint(override) or renamed_hint(key)
    if renamed:
        return renamed
    if isinstance(exc, MissingConfigException) and exc.options is not None:
        group = (exc.missing_cfg_file or "").rsplit("/", 1)
        options = [o for o in exc.options if not o.startswith("_")]
        name = f"{group[0]}={group[-1]}" if len(group) == 2 else exc.missing_cfg_file
        return f"{name} is not an option; choose one of: {', '.join(options)}"
    if isinstance(exc, OverrideParseException):
        return f"cannot parse the command line: {_first_line(exc)} (key=value, group=option; quote lists)"
    if key:
        accepts = next((text for schema in SCHEMAS.values() if (text := describe(schema, key))), "")
        if "not in" in str(getattr(cause, "msg", "")):
            return f"{key} is not an option here ({_first_line(getattr(cause, 'msg', cause))})"
        value = getattr(cause, "value", None)
        if accepts:
            return f"{key}={value!r} is not valid: it must be {accepts}"
        return f"{key}={value!r}: {_first_line(getattr(cause, 'msg', cause))}"
    return _first_line(exc)


def _first_line(exc: Any) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def renamed_hint(key: str | None) -> str | None:
    """The message for a key that was renamed or moved (`lungnet.schema.RENAMED`), or None."""
    key = (key or "").lstrip("+~")
    for old in sorted(RENAMED, key=len, reverse=True):
        if key == old or key.startswith(old + "."):
            return f"{key} no longer exists: use {RENAMED[old]}"
    return None


def check_paths_override(args: list[str]) -> None:
    """``paths.output_dir`` names the run's own directory (set by Hydra, as in lightning-hydra-template); it used to
    be the folder every run went below, which is now ``paths.log_dir``.

    Raises:
        ConfigError: ``paths.output_dir=...`` on the command line.
    """
    for arg in args:
        if arg.lstrip("+~").startswith("paths.output_dir="):
            raise ConfigError(
                f"{arg}: paths.output_dir is the run's own directory (set by Hydra); choose the folder run "
                "directories go below with paths.log_dir=<folder>, or one run's directory with hydra.run.dir=<folder>"
            )


def check_null_groups(args: list[str], config_root: str) -> None:
    """``<group>=null`` (``logger=null``) is no option name: Hydra answers it with a traceback.

    Raises:
        ConfigError: naming the group's ``none`` option where it has one, else how to drop the group.
    """
    nulls = [a for a in args if a.count("=") == 1 and a.split("=")[1].strip().lower() in ("null", "none", "~")]
    if not nulls:
        return
    choices = group_choices(config_root)
    for arg in nulls:
        group, value = (part.strip() for part in arg.split("="))
        if group in choices and value.lower() != "none":
            use = f"{group}=none" if "none" in choices[group] else f"~{group}"
            raise ConfigError(
                f"{arg}: a config group takes an option name ({', '.join(choices[group])}); for none use {use}"
            )


def replay_resume(argv: list[str], config_root: str) -> list[str]:
    """``train.py resume=<run dir> [safe overrides]`` -> that run's own overrides, then the safe ones.

    A run directory Hydra wrote holds the command-line overrides it was started with (``.hydra/overrides.yaml``).
    They are replayed, so ``resume=<run dir>`` alone continues the run as it was configured; extra overrides
    may change only `SAFE_ON_RESUME` settings. The run continues in that directory (``hydra.run.dir``).
    Other command lines (no ``resume=<dir>``, a checkpoint file, a multirun) come back unchanged.

    A run directory is input lungnet did not write in this call: its overrides are replayed only where they
    set keys of the train schema and config-group choices (`check_replayable`), unless the command line says
    ``resume.trust_overrides=true`` (taken off the command line here, so it is never saved with the run).

    Args:
        argv: the command line (``sys.argv``).
        config_root: the configs' search path (``lungnet.commands.wrapper.config_path``), which lists the group choices.

    Raises:
        ConfigError: an extra override that would change what the run trains, a saved override that may not be
            replayed, an unreadable ``overrides.yaml``, or ``resume.trust_overrides`` without a run to replay.
    """
    prog, args = argv[0], argv[1:]
    trust, args = trust_flag(args)
    saved_file = _saved_overrides_file(args)
    if saved_file is None:
        if trust is not None:
            raise ConfigError(f"{TRUST_KEY} applies only to resume=<run dir> (a run directory holding .hydra/)")
        return argv
    run_dir = saved_file.parent.parent
    flags = [a for a in args if a.startswith("-") or "=" not in a]  # Hydra's flags and their values (--cfg job)
    overrides = OverridesParser.create().parse_overrides([a for a in args if a not in flags])
    saved_items = read_saved_overrides(saved_file)
    if not trust:
        check_replayable(saved_file, saved_items, group_choices(config_root))
    saved = [o.input_line for o in saved_items if o.key_or_group != "resume"]
    parsed = {o.key_or_group: o for o in saved_items if o.key_or_group != "resume"}
    extra = [o for o in overrides if o.key_or_group != "resume"]
    for o in extra:
        key = o.key_or_group
        if key == "hydra.run.dir":
            raise ConfigError(f"resume={run_dir} continues in that directory: drop {o.input_line}")
        same = key in parsed and parsed[key].input_line == o.input_line
        if not same and not key.startswith("hydra.") and key not in SAFE_ON_RESUME:
            raise ConfigError(
                f"resume={run_dir} continues that run with its own settings ({saved_file}); {o.input_line} would "
                f"change them. Only {', '.join(SAFE_ON_RESUME)} may change on resume: start a new run for the rest"
            )
    keys = {o.key_or_group for o in extra}
    kept = [line for line in saved if parsed_key(line) not in keys]
    log.info("resume=%s: replaying its overrides %s", run_dir, kept)
    return [prog, *flags, *kept, *(o.input_line for o in extra), f"resume={run_dir}", f"hydra.run.dir={run_dir}"]


def trust_flag(args: list[str]) -> tuple[bool | None, list[str]]:
    """``resume.trust_overrides=<bool>`` on the command line (None: not given), and the arguments without it.

    Raises:
        ConfigError: a value other than true or false.
    """
    given = [a for a in args if a.lstrip("+").startswith(TRUST_KEY + "=")]
    if not given:
        return None, args
    value = OverridesParser.create().parse_override(given[-1].lstrip("+")).value()
    if not isinstance(value, bool):
        raise ConfigError(
            f"{TRUST_KEY}={value!r} is not valid: it must be true or false (true: replay every override a "
            "resumed run directory saved, also those outside the train schema; only for a run directory you trust)"
        )
    return value, [a for a in args if a not in given]


def _saved_overrides_file(args: list[str]) -> Path | None:
    """``<run dir>/.hydra/overrides.yaml`` of ``resume=<run dir>``, or None (no such run, or a multirun)."""
    if "-m" in args or "--multirun" in args or not any(a.startswith("resume=") for a in args):
        return None
    resume = next((a for a in reversed(args) if a.startswith("resume=")), "")
    value = OverridesParser.create().parse_override(resume).value()
    saved_file = Path(str(value)).expanduser() / ".hydra" / "overrides.yaml"
    return saved_file if saved_file.is_file() else None


def read_saved_overrides(saved_file: Path) -> list[Override]:
    """A run's saved overrides, parsed, in the file's order.

    Raises:
        ConfigError: the file is not a YAML list of override lines Hydra can parse (named with the item).
    """
    try:
        items = OmegaConf.to_container(OmegaConf.load(saved_file))
    except (OSError, yaml.YAMLError, OmegaConfBaseException) as exc:
        raise ConfigError(f"{saved_file}: cannot be read as Hydra's list of overrides ({_first_line(exc)})") from exc
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise ConfigError(f"{saved_file}: must be a list of override lines (key=value, group=option), as Hydra writes")
    parser = OverridesParser.create()
    parsed = []
    for number, line in enumerate(items, 1):
        try:
            parsed.append(parser.parse_override(line))
        except HydraException as exc:
            raise ConfigError(f"{saved_file}, item {number} ({line}): cannot be parsed as an override") from exc
    return parsed


def check_replayable(saved_file: Path, overrides: list[Override], choices: dict[str, list[str]]) -> None:
    """Refuses a saved override that a resumed run may not replay (`not_replayable`), naming it and the way out.

    Raises:
        ConfigError: the first such override, with the file, its item number, why, and ``resume.trust_overrides``.
    """
    for number, override in enumerate(overrides, 1):
        why = not_replayable(override, choices)
        if why:
            raise ConfigError(
                f"{saved_file}, item {number} ({override.input_line}): {why}. A resumed run replays only train's "
                f"schema keys and config-group choices (group=option); if you trust this run directory (it is "
                f"code-like, as a config is), replay it as saved with {TRUST_KEY}=true"
            )


def not_replayable(override: Override, choices: dict[str, list[str]]) -> str:
    """Why a saved override may not be replayed ("" when it may): Hydra's own settings, code to run (``_target_``
    and Hydra's other ``_x_`` keys, also inside a value), a key outside the train schema, an unknown group choice,
    or a resolver other than `RESOLVERS_ON_REPLAY` (``oc.decode`` would build a config from a string)."""
    key = override.key_or_group
    if key == "hydra" or key.startswith(("hydra.", "hydra/")):
        return "Hydra's own settings (hydra.*) are not replayed"
    if override.package is not None or override.is_sweep_override():
        return "a package (@) or sweep override is not replayed"
    value = None if override.is_delete() else override.value()
    if key in choices:
        options = choices[key]
        wrong = [v for v in (value if isinstance(value, list) else [value]) if v is not None and v not in options]
        return f"{key}={wrong[0]!r} is not an option; choose one of: {', '.join(options)}" if wrong else ""
    reserved = next((part for part in key.split(".") if _RESERVED.match(part)), None)
    if reserved:
        return f"{reserved} names code for Hydra to run"
    if not in_schema(TrainConfig, key):
        return f"{key} is not a key of the train schema"
    return _value_not_replayable(value)


def _value_not_replayable(value: Any) -> str:
    """Why a value may not be replayed: a Hydra ``_x_`` key inside it, or a resolver outside `RESOLVERS_ON_REPLAY`."""
    if isinstance(value, dict):
        reserved = next((str(k) for k in value if _RESERVED.match(str(k))), None)
        if reserved:
            return f"{reserved} names code for Hydra to run"
        return next((why for v in value.values() if (why := _value_not_replayable(v))), "")
    if isinstance(value, list):
        return next((why for v in value if (why := _value_not_replayable(v))), "")
    if isinstance(value, str):
        other = [r for r in re.findall(r"\$\{\s*([\w.\-]+)\s*:", value) if r not in RESOLVERS_ON_REPLAY]
        if other:
            return f"the resolver {other[0]} is not replayed (only {', '.join(RESOLVERS_ON_REPLAY)})"
    return ""


def group_choices(config_root: str) -> dict[str, list[str]]:
    """Each config group of the configs at ``config_root`` (but Hydra's own) with its options (but ``_base``)."""
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(config_root))
    groups = [g for g in loader.list_groups("") if g != "hydra"]
    return {g: [o for o in loader.get_group_options(g) if not o.startswith("_")] for g in groups}


def parsed_key(line: str) -> str:
    """The key (or config group) an override line sets."""
    return OverridesParser.create().parse_override(line).key_or_group
