"""A data set manifest's rows read back: every value of a file lungnet may not have written type- and range-checked.

`rows_of` checks the rows column by column (`_checked_columns`: a set of types, min and max, one translate of the
joined hex digits per column, about 20x less CPU than row by row); when a column fails, the rows go through `_row`
one by one, which names the first wrong value (row, key, value, what is accepted). The checked rows stay columns
(`Rows`), looked up by path without a dict per row (an NIH manifest holds 112,120 rows).
"""

from __future__ import annotations

import re

from lungnet.untrusted import BadValue, Fields

__all__ = ["FIELDS", "MANIFEST_VERSION", "MAX_TEXT", "BadValue", "Rows", "header", "rows_of"]

MANIFEST_VERSION = 2  # 2: each file's label and patient id (a version 1 manifest is scanned again, not misread)
FIELDS = ("path", "size", "mtime_ns", "sha1", "dhash", "error", "decoded", "height", "width", "label", "patient")
_HEX = {k: (n, re.compile(f"(?:[0-9a-f]{{{n}}})?")) for k, n in (("sha1", 40), ("dhash", 64))}  # '': not read
_MAX_INT = 2**63 - 1
_INTS = {"size": 0, "height": 0, "width": 0, "mtime_ns": -_MAX_INT}  # lowest value (mtime: a file before 1970)
MAX_TEXT = 16384  # characters of a path, error, label or patient id: a longer one was not written by lungnet
_TEXTS = {"path": False, "sha1": False, "dhash": False, "error": False, "label": True, "patient": True}  # null ok


def _text(fields: Fields, name: str, null: bool = False) -> str | None:
    """A string of at most `MAX_TEXT` characters (None where ``null`` allows it)."""
    value = fields.string(name, null=null)
    if value is not None and len(value) > MAX_TEXT:
        raise BadValue(name, value, f"a string of at most {MAX_TEXT} characters")
    return value


def _row(entry: object) -> dict:
    """One manifest row as a dict, each value type- and range-checked (a file lungnet may not have written): as
    `lungnet.untrusted.Fields` checks them, in plain tests (an NIH manifest holds 112,120 rows).

    Raises:
        BadValue: names the value, what it is and what is accepted.
    """
    if not isinstance(entry, list) or len(entry) != len(FIELDS):
        raise BadValue("the row", entry, f"a list of {len(FIELDS)} values ({', '.join(FIELDS)})")
    row = dict(zip(FIELDS, entry, strict=True))
    for key, low in _INTS.items():
        value = row[key]
        if type(value) is not int or not low <= value <= _MAX_INT:  # type: a bool is no whole number here
            raise BadValue(key, value, f"a whole number in [{'-2**63 + 1' if low else 0}, 2**63 - 1]")
    for key, null in _TEXTS.items():
        value = row[key]
        if not (type(value) is str and len(value) <= MAX_TEXT) and not (null and value is None):
            accepted = f"a string of at most {MAX_TEXT} characters" + (", or null" if null else "")
            raise BadValue(key, value, accepted)
    if type(row["decoded"]) is not bool:
        raise BadValue("decoded", row["decoded"], "true or false")
    if not row["path"]:
        raise BadValue("path", "", "a file path")
    for key, (digits, pattern) in _HEX.items():
        if not pattern.fullmatch(row[key]):
            raise BadValue(key, row[key], f"'' or {digits} lowercase hex digits")
    return row


def _checked_columns(files: list) -> dict[str, tuple] | None:
    """The rows as columns when every row passes `_row`, checked column by column in C-level passes (set of types,
    min/max, one translate of the joined hex digits) instead of row by row: the same checks, about 20x less CPU per
    row. None sends the rows through `_row`, which names the first wrong value.
    """
    n = len(FIELDS)
    if not files:
        return {k: () for k in FIELDS}
    if set(map(type, files)) != {list} or set(map(len, files)) != {n}:
        return None
    cols = dict(zip(FIELDS, zip(*files, strict=True), strict=True))
    for key, low in _INTS.items():
        col = cols[key]
        if set(map(type, col)) != {int} or min(col) < low or max(col) > _MAX_INT:  # a bool is no int here
            return None
    for key, null in _TEXTS.items():
        col = [v for v in cols[key] if v is not None] if null else cols[key]
        if not set(map(type, col)) <= {str} or max(map(len, col), default=0) > MAX_TEXT:
            return None
    if set(map(type, cols["decoded"])) != {bool}:
        return None
    paths = set(cols["path"])
    if len(paths) != len(files) or "" in paths:  # a path twice, or an empty one
        return None
    for key, (digits, _) in _HEX.items():
        if not set(map(len, cols[key])) <= {0, digits}:
            return None
        try:
            joined = "".join(cols[key]).encode("ascii")
        except UnicodeEncodeError:
            return None
        if joined.translate(None, b"0123456789abcdef"):
            return None
    return cols


class Rows:
    """A manifest's rows as columns (``cols``: one tuple per field of `FIELDS`) and each path's row number
    (``index``): a data set's 112,120 rows are checked and looked up without a dict per row."""

    def __init__(self, cols: dict[str, tuple]) -> None:
        self.cols = cols
        self.index = dict(zip(cols["path"], range(len(cols["path"])), strict=True))

    def row(self, i: int) -> dict:
        """Row ``i`` as a dict of `FIELDS`."""
        return {k: self.cols[k][i] for k in FIELDS}


def rows_of(files: list) -> tuple[Rows | None, tuple[int, BadValue] | None]:
    """The manifest's rows, every value checked (`_checked_columns`, else `_row` row by row), and None; or (None,
    (row number from 1, the first wrong value))."""
    cols = _checked_columns(files)
    if cols is not None:
        return Rows(cols), None
    seen: set[str] = set()
    for i, entry in enumerate(files):
        try:
            row = _row(entry)
            if row["path"] in seen:
                raise BadValue("path", row["path"], "a path no earlier row holds")
        except BadValue as exc:
            return None, (i + 1, exc)
        seen.add(row["path"])
    return Rows(dict(zip(FIELDS, zip(*files, strict=True), strict=True))), None  # not reached: the checks agree


def header(data: object) -> tuple[str, list, str | None]:
    """(verdict, rows, source): verdict ``ok``, or ``old`` / ``new`` for a manifest of an older / newer version.

    Raises:
        BadValue: a header value of the wrong type.
    """
    fields = Fields(data, "")
    version = fields.integer("version", ge=1)
    if version < MANIFEST_VERSION:
        return "old", [], None
    if version > MANIFEST_VERSION:
        return "new", [], None
    if fields.raw("fields") != list(FIELDS):
        raise BadValue("fields", fields.raw("fields"), f"{list(FIELDS)} (the version {MANIFEST_VERSION} fields)")
    source = _text(fields, "source", null=True)
    files = fields.raw("files")
    if not isinstance(files, list):
        raise BadValue("files", files, "a list of rows")
    return "ok", files, source
