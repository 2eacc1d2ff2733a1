"""Values read from files lungnet did not write in this run: decision files, ensemble manifests, their OOD gates.

Each format has one reader that takes every value it uses through `Fields`, which checks its exact JSON type and
its range where it is read. A bad value raises `BadValue`, ``<key> is <value>; accepted: <what>``, and the reader
adds the file's name, so the user gets one line naming the file, the key and the accepted range (exit status 2
through `lungnet.commands.wrapper.run_safely`). JSON's ``NaN`` and ``Infinity`` are never a number here: lungnet writes
non-finite floats as null (`lungnet.io.write_json`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

MISSING: Any = object()


class BadValue(ValueError):
    """A value of the wrong type or out of range: ``<key> is <value>; accepted: <what>``.

    Args:
        key: the value's key in its file (``thresholds.PNEUMONIA``, ``members[1].temperature``).
        value: the value as read (shown as JSON-ish, shortened), unless ``said`` describes it.
        accepted: what the key accepts, in words.
        said: a description instead of the value (``an array holding NaN``).
    """

    def __init__(self, key: str, value: Any, accepted: str, said: str | None = None) -> None:
        shown = said or ("missing" if value is MISSING else _show(value))
        super().__init__(f"{key} is {shown}; accepted: {accepted}")


def _show(value: Any) -> str:
    text = "null" if value is None else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def is_number(value: Any) -> bool:
    """A finite JSON number (not a bool, not NaN or infinite, not an integer too large for a float)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # a 400-digit JSON integer
        return False


def number_range(ge=None, gt=None, le=None, lt=None) -> str:
    """``a number in (0, 1)``, ``a number >= 0``, ``a finite number``: limits as `lungnet.schema.fields.opt` states
    them."""
    low = ("[", ge) if ge is not None else ("(", gt) if gt is not None else None
    high = ("]", le) if le is not None else (")", lt) if lt is not None else None
    if low and high:
        return f"a number in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}"
    if low:
        return f"a number {'>=' if low[0] == '[' else '>'} {low[1]:g}"
    if high:
        return f"a number {'<=' if high[0] == ']' else '<'} {high[1]:g}"
    return "a finite number"


def in_range(x: float, ge=None, gt=None, le=None, lt=None) -> bool:
    """True when ``x`` is within the limits (each None: no limit)."""
    return (ge is None or x >= ge) and (gt is None or x > gt) and (le is None or x <= le) and (lt is None or x < lt)


class Fields:
    """A JSON object from an untrusted file, read key by key with type and range checks.

    Args:
        data: the parsed JSON value (anything: a non-object is refused).
        prefix: how its keys are named in messages, e.g. ``ood.`` or ``members[2].``.

    Raises:
        BadValue: ``data`` is not a JSON object.
    """

    def __init__(self, data: Any, prefix: str = "") -> None:
        if not isinstance(data, dict):
            raise BadValue(prefix.rstrip(".") or "the file", data, "a JSON object")
        self.data, self.prefix = data, prefix

    def key(self, name: str) -> str:
        """The key's full name in messages."""
        return f"{self.prefix}{name}"

    def raw(self, name: str, default: Any = MISSING) -> Any:
        """The value as it is (``default`` when absent; absent without a default is refused)."""
        value = self.data.get(name, default)
        if value is MISSING:
            raise BadValue(self.key(name), MISSING, "a value (the key is required)")
        return value

    def number(self, name: str, null: bool = False, default: Any = MISSING, **limits: float) -> float | None:
        """A finite number within ``limits`` (``ge``, ``gt``, ``le``, ``lt``, as `lungnet.schema.fields.opt`
        states them); None where ``null`` allows null, or when absent with default None."""
        value = self.raw(name, default)
        if value is None and (null or default is None):
            return None
        if not is_number(value) or not in_range(value, **limits):
            raise BadValue(self.key(name), value, number_range(**limits) + (", or null" if null else ""))
        return float(value)

    def integer(self, name: str, null: bool = False, default: Any = MISSING, ge: int | None = None) -> int | None:
        """A whole JSON number (not a bool, not ``2.5``) of at least ``ge``; None where ``null`` allows null, or
        when absent with default None."""
        value = self.raw(name, default)
        if value is None and (null or default is None):
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not in_range(value, ge=ge):
            accepted = "a whole number" + (f" >= {ge}" if ge is not None else "") + (", or null" if null else "")
            raise BadValue(self.key(name), value, accepted)
        return int(value)

    def string(self, name: str, *, choices=None, null: bool = False, default: Any = MISSING) -> str | None:
        """A string (one of ``choices`` when given), or None where null is allowed."""
        value = self.raw(name, default)
        if value is None and (null or default is None):
            return None
        if not isinstance(value, str) or (choices is not None and value not in choices):
            accepted = f"one of {list(choices)}" if choices is not None else "a string"
            raise BadValue(self.key(name), value, accepted + (", or null" if null else ""))
        return value

    def boolean(self, name: str, default: Any = MISSING) -> bool:
        """``true`` or ``false`` (not a string, not a number)."""
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise BadValue(self.key(name), value, "true or false")
        return value

    def strings(self, name: str) -> list[str]:
        """A non-empty list of distinct strings."""
        value = self.raw(name)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise BadValue(self.key(name), value, "a non-empty list of strings")
        if len(set(value)) != len(value):
            raise BadValue(self.key(name), value, "distinct strings")
        return list(value)

    def nested(self, name: str, null: bool = False, default: Any = MISSING) -> Fields | None:
        """A nested JSON object as `Fields` (None where null is allowed or it is absent with default None)."""
        value = self.raw(name, default)
        if value is None and (null or default is None):
            return None
        if not isinstance(value, dict):
            raise BadValue(self.key(name), value, "a JSON object" + (", or null" if null else ""))
        return Fields(value, f"{self.key(name)}.")

    def items(self, name: str) -> list:
        """A non-empty list (its entries are checked by the caller)."""
        value = self.raw(name)
        if not isinstance(value, list) or not value:
            raise BadValue(self.key(name), value, "a non-empty list")
        return value

    def numbers(self, name: str, default: Any = MISSING, **limits: float) -> np.ndarray:
        """A list of finite numbers within ``limits`` as a float64 array (``default`` when absent or null)."""
        value = self.raw(name, default)
        if value is None and default is not MISSING:
            value = default
        accepted = "a list of " + number_range(**limits).replace("a number", "numbers")
        if not isinstance(value, list):
            raise BadValue(self.key(name), value, accepted)
        bad = next((i for i, v in enumerate(value) if not (is_number(v) and in_range(v, **limits))), None)
        if bad is not None:
            raise BadValue(f"{self.key(name)}[{bad}]", value[bad], accepted)
        return np.asarray(value, dtype=np.float64)
