"""Values read from files lungnet did not write in this run: decision files, ensemble manifests, their OOD gates.

Each format has one reader that takes every value it uses through `Fields`, which checks its exact JSON type and
its range where it is read. A bad value raises `BadValue`, ``<key> is <value>; accepted: <what>``, and the reader
adds the file's name, so the user gets one line naming the file, the key and the accepted range (exit status 2
through `lungnet.cli.run_safely`). JSON's ``NaN`` and ``Infinity`` are never a number here: lungnet writes
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
    """A finite JSON number (not a bool, not NaN or infinite)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def number_range(low: float | None, high: float | None, open_low: bool = False, open_high: bool = False) -> str:
    """``a number in (0, 1)``, ``a number >= 0``, ``a finite number``."""
    if low is not None and high is not None:
        return f"a number in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    if low is not None:
        return f"a number {'>' if open_low else '>='} {low:g}"
    if high is not None:
        return f"a number {'<' if open_high else '<='} {high:g}"
    return "a finite number"


def _in_range(x: float, low, high, open_low: bool, open_high: bool) -> bool:
    above = low is None or (x > low if open_low else x >= low)
    below = high is None or (x < high if open_high else x <= high)
    return above and below


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

    def number(self, name: str, low=None, high=None, *, open_low=False, open_high=False, null=False, default=MISSING):
        """A finite number in the range (None when ``null`` allows null or it is absent with default None)."""
        value = self.raw(name, default)
        if value is None and (null or default is None):
            return None
        if not is_number(value) or not _in_range(value, low, high, open_low, open_high):
            accepted = number_range(low, high, open_low, open_high) + (", or null" if null else "")
            raise BadValue(self.key(name), value, accepted)
        return float(value)

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

    def numbers(self, name: str, low=None, high=None, default: Any = MISSING) -> np.ndarray:
        """A list of finite numbers in [low, high] as a float64 array (empty when absent with default ``[]``)."""
        value = self.raw(name, default)
        if value is None and default is not MISSING:
            value = default
        accepted = "a list of " + number_range(low, high).replace("a number", "numbers")
        if not isinstance(value, list):
            raise BadValue(self.key(name), value, accepted)
        bad = next((i for i, v in enumerate(value) if not (is_number(v) and _in_range(v, low, high, 0, 0))), None)
        if bad is not None:
            raise BadValue(f"{self.key(name)}[{bad}]", value[bad], accepted)
        return np.asarray(value, dtype=np.float64)
