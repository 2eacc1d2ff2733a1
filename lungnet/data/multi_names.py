"""The names of ``data=multi`` (`lungnet.data.multi`): which ``conf/data`` configs ``data.sources`` may list, checked
before anything is read (`lungnet.commands.preflight` imports this; it loads nothing heavy)."""

from __future__ import annotations

from pathlib import Path

import lungnet
from lungnet.errors import DataError

MULTI = "multi"


def data_config_dir() -> Path:
    """``conf/data``: inside the installed package, else the checkout's (as `lungnet.commands.wrapper.config_path`)."""
    package = Path(lungnet.__file__).resolve().parent
    inside = package / "conf" / "data"
    return inside if inside.is_dir() else package.parent / "conf" / "data"


def known_sets() -> list[str]:
    """The ``conf/data`` configs that ``data.sources`` may name."""
    return sorted(p.stem for p in data_config_dir().glob("*.yaml") if not p.stem.startswith("_") and p.stem != MULTI)


def check_names(names, roots) -> list[str]:
    """``data.sources`` and ``data.roots`` checked before anything is read.

    Raises:
        DataError: one line naming the key, the bad name and the valid ones.
    """
    names = [str(n) for n in (names or [])]
    valid = known_sets()
    if not names:
        raise DataError(f"data=multi needs data.sources, e.g. 'data.sources=[nih14,pneumonia]' (valid: {valid})")
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise DataError(
            f"data.sources: unknown data set {unknown[0]!r} (no conf/data/{unknown[0]}.yaml); valid: {valid}"
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"data.sources names {repeated[0]!r} twice: list each data set once")
    stray = [k for k, v in (roots or {}).items() if v and k not in names]
    if stray:
        raise DataError(f"data.roots.{stray[0]} names no data set of data.sources={names}: drop it or add the set")
    return names
