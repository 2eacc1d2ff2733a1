"""Checks over the structured configs (`lungnet.schema`): ranges, what a key accepts in words, renamed keys, and the
run directory a config's paths point at. Light on imports: the entry points use it before anything heavy loads.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lungnet.errors import ConfigError
from lungnet.schema import RENAMED, Choice


def describe(schema: type, key: str) -> str:
    """What a dotted key of ``schema`` accepts, in words (its choices or type, range, and help); "" if unknown."""
    found = _lookup(schema, key)
    return _accepts(*found, exact=True) if found else ""


def _hint(owner: type, name: str) -> tuple[Any, bool]:
    """The annotated type of ``owner.name`` without ``None``, and whether it is nullable."""
    tp = typing.get_type_hints(owner)[name]
    args = typing.get_args(tp)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else Any), True
    return tp, False


def _lookup(schema: type, key: str) -> tuple[type, dataclasses.Field] | None:
    """(owning dataclass, field) of a dotted key, or None."""
    owner, found = schema, None
    for part in key.split("."):
        if not dataclasses.is_dataclass(owner):
            return None
        fields = {f.name: f for f in dataclasses.fields(owner)}
        if part not in fields:
            return None
        found = (owner, fields[part])
        owner = _hint(owner, part)[0]
    return found


def in_schema(schema: type, key: str) -> bool:
    """Whether a dotted key names a field of ``schema``, or a key below a dict-typed field (``trainer.*``)."""
    owner: Any = schema
    for part in key.split("."):
        if typing.get_origin(owner) is dict:
            return True
        if not dataclasses.is_dataclass(owner) or part not in {f.name for f in dataclasses.fields(owner)}:
            return False
        owner = _hint(owner, part)[0]
    return True


def _accepts(owner: type, f: dataclasses.Field, exact: bool = False) -> str:
    """What a field accepts: "one of: a, b", "a number >= 8, or null (help)", "in [0, 1) (help)".

    ``exact``: say "an integer" for integer fields (a type error) rather than "a number" (a range error).
    """
    tp, nullable = _hint(owner, f.name)
    meta = f.metadata
    if isinstance(tp, type) and issubclass(tp, Choice):
        text = "one of: " + ", ".join(tp.values())
    elif "choices" in meta:
        text = "one of: " + ", ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in meta["choices"])
    elif tp in (int, float):
        low = next(((k, meta[k]) for k in ("ge", "gt") if k in meta), None)
        high = next(((k, meta[k]) for k in ("le", "lt") if k in meta), None)
        kind = "an integer" if exact and tp is int else "a number"
        if low and high:
            text = f"in {'[' if low[0] == 'ge' else '('}{low[1]}, {high[1]}{']' if high[0] == 'le' else ')'}"
            text = f"{kind} {text}" if exact else text
        elif low or high:
            k, v = low or high
            text = f"{kind} {dict(ge='>=', gt='>', le='<=', lt='<')[k]} {v}"
        else:
            text = kind
    else:
        text = {bool: "true or false", str: "a string"}.get(tp, "a value")
    if nullable:
        text += ", or null"
    return f"{text} ({meta['help']})" if meta.get("help") else text


def check_ranges(cfg: DictConfig, schema: type, prefix: str = "") -> None:
    """Enforces the ``ge``/``gt``/``le``/``lt`` limits in ``schema``'s field metadata on ``cfg``.

    Raises:
        ConfigError: the first value out of range, naming the key and what it accepts.
    """
    for f in dataclasses.fields(schema):
        if f.name not in cfg:
            continue
        value = cfg[f.name]
        key = f"{prefix}{f.name}"
        sub = _hint(schema, f.name)[0]
        if dataclasses.is_dataclass(sub):
            if isinstance(value, DictConfig):
                check_ranges(value, sub, key + ".")
            continue
        meta = f.metadata
        if any(isinstance(c, bool | str) for c in meta.get("choices", ())):  # an Any field of words and booleans
            if not any(type(value) is type(c) and value == c for c in meta["choices"]) and (
                value is not None or not _hint(schema, f.name)[1]
            ):
                raise ConfigError(f"{key}={value!r} must be {_accepts(schema, f)}")
            continue
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        bad = (
            ("choices" in meta and value not in meta["choices"])
            or (math.isnan(value) and any(k in meta for k in ("ge", "gt", "le", "lt")))  # NaN passes every comparison
            or ("ge" in meta and value < meta["ge"])
            or ("gt" in meta and value <= meta["gt"])
            or ("le" in meta and value > meta["le"])
            or ("lt" in meta and value >= meta["lt"])
        )
        if bad:
            raise ConfigError(f"{key}={value!r} must be {_accepts(schema, f)}")


def check_stored(values: Any, schema: type, where: str, prefix: str) -> dict:
    """Type- and range-checks a config block read from a file lungnet did not write in this run (a checkpoint's
    stored ``model`` or ``data``) against the schema and limits the command line goes through.

    Keys the schema does not know are kept as they are (older or newer files); interpolations (``${...}``) are
    refused, a stored file names values, it does not make lungnet read the environment.

    Args:
        values: the stored block.
        schema: its dataclass (`lungnet.schema.DataConfig`, `lungnet.schema.ModelConfig`).
        where: the file, for the message.
        prefix: the block's dotted key in the file (``hyper_parameters.data.``).

    Returns:
        ``values`` with the schema's keys converted to their types (enums as strings).

    Raises:
        ConfigError: one line naming the file, the key and what it accepts.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.')} must be a mapping, not {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(schema)} & set(values)
    for key in sorted(known):
        value = values[key]
        bad = isinstance(value, str) and "${" in value
        try:
            OmegaConf.merge(OmegaConf.structured(schema), {key: value})
        except OmegaConfBaseException:
            bad = True
        if bad:
            raise ConfigError(f"{where}: {prefix}{key}={value!r} must be {describe(schema, key)}")
    node = OmegaConf.merge(OmegaConf.structured(schema), {k: values[k] for k in known})
    try:
        check_ranges(node, schema, prefix)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    typed = OmegaConf.to_container(node, resolve=False, enum_to_str=True)
    return {**values, **{k: typed[k] for k in known}}


def renamed_keys(cfg: DictConfig) -> list[str]:
    """One message per old key still in ``cfg`` (e.g. an ``optim:`` block in a user's own preset)."""
    found = []
    for old, new in RENAMED.items():
        if "." in old and OmegaConf.select(cfg, old, default=None) is not None:
            found.append(f"{old} no longer exists: use {new}")
    if not found and "optim" in cfg:
        found.append(f"optim no longer exists: use {RENAMED['optim']}")
    return found


def pin_paths(cfg: DictConfig, run_dir: str | os.PathLike) -> None:
    """Points ``paths.output_dir`` at the run directory actually written (also a resumed run's own, and outside a
    Hydra app), and ``paths.work_dir`` at the working directory where Hydra did not set it (the compose API).

    Raises:
        ConfigError: ``paths.output_dir`` was given by hand; it names this run's directory, ``paths.log_dir`` chooses
            where run directories go.
    """
    if "paths" not in cfg:
        return
    raw = OmegaConf.to_container(cfg.paths, resolve=False)
    given = str(raw.get("output_dir") or "")
    run_dir = Path(run_dir).absolute()
    if given and "${" not in given and Path(given).expanduser().absolute() != run_dir:
        raise ConfigError(
            f"paths.output_dir={given} is this run's own directory (set by Hydra): choose where run directories go "
            "with paths.log_dir=<folder>, or one run's directory with hydra.run.dir=<folder>"
        )
    cfg.paths.output_dir = str(run_dir)
    if "${hydra:" in str(raw.get("work_dir")) and not HydraConfig.initialized():
        cfg.paths.work_dir = os.getcwd()
