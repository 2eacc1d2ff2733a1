"""What a command line means before Hydra composes it, and what its mistakes are called.

Hydra refuses a value the schema (`lungnet.schema`) does not accept, an unknown group option or an override it
cannot parse while composing, before it writes anything, but reports it over several lines with exit status 1.
`config_error_line` words those as one line naming the key and what it accepts (`lungnet.cli` logs it and exits
2, like `lungnet.cli.run_safely` does for the mistakes found later). For ``train`` `replay_resume` replays a
run's own overrides on ``resume=<run dir>``, so a run continues with the settings it started with.

Light on imports on purpose: it runs before anything heavy is loaded (``--help`` stays fast).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import MissingConfigException, OverrideParseException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lungnet.config_checks import describe
from lungnet.errors import ConfigError
from lungnet.schema import RENAMED, SCHEMAS

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


def replay_resume(argv: list[str]) -> list[str]:
    """``train.py resume=<run dir> [safe overrides]`` -> that run's own overrides, then the safe ones.

    A run directory Hydra wrote holds the command-line overrides it was started with (``.hydra/overrides.yaml``).
    They are replayed, so ``resume=<run dir>`` alone continues the run as it was configured; extra overrides
    may change only `SAFE_ON_RESUME` settings. The run continues in that directory (``hydra.run.dir``).
    Other command lines (no ``resume=<dir>``, a checkpoint file, a multirun) come back unchanged.

    Raises:
        ConfigError: an extra override that would change what the run trains.
    """
    prog, args = argv[0], argv[1:]
    if "-m" in args or "--multirun" in args or not any(a.startswith("resume=") for a in args):
        return argv
    flags = [a for a in args if a.startswith("-") or "=" not in a]  # Hydra's flags and their values (--cfg job)
    overrides = OverridesParser.create().parse_overrides([a for a in args if a not in flags])
    resume = next((o for o in overrides if o.key_or_group == "resume"), None)
    run_dir = Path(str(resume.value())).expanduser() if resume is not None else None
    saved_file = run_dir / ".hydra" / "overrides.yaml" if run_dir is not None else None
    if saved_file is None or not saved_file.is_file():
        return argv
    saved = [s for s in OmegaConf.to_container(OmegaConf.load(saved_file)) if not str(s).startswith("resume=")]
    parsed = {o.key_or_group: o for o in OverridesParser.create().parse_overrides(saved)}
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


def parsed_key(line: str) -> str:
    """The key (or config group) an override line sets."""
    return OverridesParser.create().parse_override(line).key_or_group
