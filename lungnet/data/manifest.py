"""A data set is scanned once: what the setup scan found per file, kept for the next command.

The scan (`lungnet.data.checks.check_paths`) reads every file's bytes (SHA-1) and decodes it (unreadable files,
native size, 256-bit dHash): about 18 ms of CPU per 1024 px image. The manifest keeps, per file, its path, size,
mtime, SHA-1, dHash, native size and the error that made it unusable (or ''), so a later command (train, resume,
evaluate, another DDP rank) re-scans only the files whose size or mtime changed, and the new ones.

Where it lives (`manifest_dir`): ``paths.cache_dir`` when set, else ``<data root>/.lungnet/`` when the data root
can be written (and has a write permission bit), else the user cache (``$XDG_CACHE_HOME/lungnet`` or
``~/.cache/lungnet``) under
``manifests/``; a read-only data root works. The file is JSON (no pyarrow needed), written atomically (temporary
file and rename). It is untrusted on read: a file that is not the expected JSON or holds a wrong type or value is
rebuilt with a warning, never a crash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import pandas as pd

from lungnet.data.checks import check_paths
from lungnet.errors import WriteError
from lungnet.io import atomic_write, check_writable, printable

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
FIELDS = ("path", "size", "mtime_ns", "sha1", "dhash", "error", "decoded", "height", "width")
_HEX = {"sha1": re.compile(r"(?:[0-9a-f]{40})?"), "dhash": re.compile(r"(?:[0-9a-f]{64})?")}
_MAX_INT = 2**63 - 1


def user_cache() -> Path:
    """``$XDG_CACHE_HOME/lungnet``, else ``~/.cache/lungnet``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lungnet"


def _writable(root: Path, folder: Path) -> bool:
    """Whether ``folder`` (below ``root``) may be written: ``root`` has a write permission bit (a data root marked
    read-only stays untouched, also for root, whom `os.access` always allows) and a probe file can be written."""
    try:
        if not root.stat().st_mode & 0o222:
            return False
        check_writable(folder)
    except OSError:
        return False
    return True


def manifest_dir(cache_dir: str | os.PathLike | None, root: str | os.PathLike) -> Path:
    """The folder of a data set's manifest: ``cache_dir`` when set, else ``<root>/.lungnet`` when writable, else
    `user_cache` ``/manifests``."""
    if cache_dir:
        return Path(os.path.expanduser(str(cache_dir))).absolute()
    own = Path(root) / ".lungnet"
    if Path(root).is_dir() and _writable(Path(root), own):
        return own
    return user_cache() / "manifests"


def manifest_path(cache_dir: str | os.PathLike | None, root: str | os.PathLike) -> Path:
    """The manifest file of the data set at ``root``: one per data root (its absolute path names it)."""
    key = hashlib.sha256(os.fsencode(str(Path(root).absolute()))).hexdigest()[:16]
    return manifest_dir(cache_dir, root) / f"manifest-{key}.json"


def _valid(entry: object) -> bool:
    """One manifest row: the right types and ranges (a file lungnet may not have written)."""
    if not isinstance(entry, list) or len(entry) != len(FIELDS):
        return False
    row = dict(zip(FIELDS, entry, strict=True))
    ints = [row[k] for k in ("size", "mtime_ns", "height", "width")]
    if not all(isinstance(v, int) and not isinstance(v, bool) and -_MAX_INT <= v <= _MAX_INT for v in ints):
        return False
    if min(row["size"], row["height"], row["width"]) < 0:  # mtime may be negative: a file dated before 1970
        return False
    if not all(isinstance(row[k], str) for k in ("path", "sha1", "dhash", "error")) or not row["path"]:
        return False
    return isinstance(row["decoded"], bool) and all(_HEX[k].fullmatch(row[k]) for k in _HEX)


def read_manifest(path: Path) -> dict[str, dict] | None:
    """The manifest's rows by path; None when there is none, or (with a warning) when it cannot be trusted."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("Manifest %s cannot be read (%s): rebuilding it", printable(path), exc)
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        log.warning("Manifest %s is not valid JSON (%s): rebuilding it", printable(path), str(exc)[:120])
        return None
    ok = (
        isinstance(data, dict)
        and data.get("version") == MANIFEST_VERSION
        and data.get("fields") == list(FIELDS)
        and isinstance(data.get("files"), list)
    )
    bad = next((i for i, e in enumerate(data["files"]) if not _valid(e)), None) if ok else None
    if not ok or bad is not None:
        where = f"row {bad + 1} holds a wrong type or value" if ok else f"not a version {MANIFEST_VERSION} manifest"
        log.warning("Manifest %s: %s: rebuilding it", printable(path), where)
        return None
    return {e[0]: dict(zip(FIELDS, e, strict=True)) for e in data["files"]}


def write_manifest(path: Path, rows: dict[str, dict]) -> bool:
    """Writes the manifest atomically; a folder that cannot be written only warns (the next command re-scans)."""
    files = [[rows[p][k] for k in FIELDS] for p in sorted(rows)]
    text = json.dumps({"version": MANIFEST_VERSION, "fields": list(FIELDS), "files": files})
    try:
        atomic_write(path, lambda fh: fh.write(text), encoding="utf-8")
    except WriteError as exc:
        log.warning("Manifest not kept (%s): the next command scans the data set again", exc)
        return False
    return True


def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return int(st.st_size), int(st.st_mtime_ns)


def _plan(paths: list[str], old: dict[str, dict], decode: set[str]) -> tuple[dict[str, dict], list[tuple]]:
    """Splits ``paths`` into the manifest rows still valid (same size and mtime, decoded when it must be) and the
    files to scan, each as (path, (size, mtime) or None, decode)."""
    kept, todo = {}, []
    for p in dict.fromkeys(paths):
        st, entry, dec = _stat(p), old.get(p), p in decode
        if st is not None and entry and (entry["size"], entry["mtime_ns"]) == st and (entry["decoded"] or not dec):
            kept[p] = entry
        else:
            todo.append((p, st, dec))
    return kept, todo


def _scan(todo: list[tuple], workers: int | None) -> dict[str, dict]:
    """Scans the planned files (decoded ones and hashed-only ones apart); rows by path."""
    found: dict[str, dict] = {}
    for dec in (True, False):
        part = [(p, st) for p, st, d in todo if d is dec]
        if not part:
            continue
        results = check_paths([p for p, _ in part], dec, workers, "Scanning images" if dec else "Hashing images")
        for (p, st), (sha1, error, dh, height, width) in zip(part, results, strict=True):
            size, mtime = st or (0, 0)
            found[p] = dict(path=p, size=size, mtime_ns=mtime, sha1=sha1, dhash=dh, error=error, decoded=dec)
            found[p].update(height=height, width=width, keep=st is not None and sha1 != "")
    return found


def scan_table(
    table: pd.DataFrame,
    decode: bool,
    manifest: Path | None,
    workers: int | None = None,
    decode_only: set[str] | None = None,
    write: bool = True,
) -> pd.DataFrame:
    """`lungnet.data.checks.scan_files` through the data set's manifest: only new or changed files are read.

    Args:
        table: the source's rows (``path``; ``error`` for rows it already marked bad: those are not read).
        decode: decode the images (unreadable files, dHash), not only hash them.
        manifest: the manifest file (`manifest_path`; None: none kept).
        workers: scan processes (None: every available core).
        decode_only: with ``decode``, scan only these paths decoding (the others are hashed unless the manifest
            holds them decoded already; None: all of them).
        write: write the manifest back (False on the DDP ranks that only read what rank 0 wrote).

    Returns:
        The table with ``sha1``, ``error`` ('' for good files), ``dhash`` ('' when not decoded) and ``decoded``
        (whether the image was decoded, now or by an earlier scan: False for a file only hashed) columns.
    """
    paths = table["path"].astype(str).tolist()
    known = table["error"].fillna("").astype(str).tolist() if "error" in table else [""] * len(paths)
    wanted = [p for p, e in zip(paths, known, strict=True) if not e]
    old = (read_manifest(manifest) if manifest is not None else None) or {}
    decoded = set(wanted) if decode and decode_only is None else set(decode_only or ()) if decode else set()
    kept, todo = _plan(wanted, old, decoded)
    found = _scan(todo, workers)
    if manifest is not None:
        others = {p: e for p, e in old.items() if p not in kept and p not in found and _stat(p) == _key(e)}
        removed = len(old) - len(kept) - len(others) - sum(p in old for p in found)
        log.info("manifest: %d unchanged, %d re-scanned, %d removed (%s)", len(kept), len(todo), removed, manifest)
        if write and (todo or removed):
            rows = {**others, **kept, **{p: e for p, e in found.items() if e["keep"]}}
            write_manifest(manifest, {p: {k: e[k] for k in FIELDS} for p, e in rows.items()})
    rows = {**kept, **found}
    out = table.copy()
    out["sha1"] = [rows[p]["sha1"] if not e else "" for p, e in zip(paths, known, strict=True)]
    out["error"] = [e or _error(rows[p], decode) for p, e in zip(paths, known, strict=True)]
    out["dhash"] = [rows[p]["dhash"] if not e and decode else "" for p, e in zip(paths, known, strict=True)]
    out["decoded"] = [bool(not e and rows[p]["decoded"]) for p, e in zip(paths, known, strict=True)]
    return out


def _key(entry: dict) -> tuple[int, int]:
    return entry["size"], entry["mtime_ns"]


def _error(entry: dict, decode: bool) -> str:
    """A row's error: with ``decode``, whatever its scan found; without, only a file that could not be read."""
    return entry["error"] if decode or entry["sha1"] == "" else ""
