"""A data set is scanned once: what the setup scan found per file, kept for the next command.

The scan (`lungnet.data.checks.check_paths`) reads every file once, hashes its bytes (SHA-1) and decodes them
(unreadable files, native size, 256-bit dHash): about 18 ms of CPU per 1024 px image. The manifest keeps, per file,
its path, size, mtime, SHA-1, dHash, native size, the error that made it unusable (or ''), and its label and patient
id as the data set's table gives them (the ``label`` and ``patient`` of its split files; null where there is none),
so a later command (train, resume, evaluate, another DDP rank) re-scans only the files whose size or mtime changed,
and the new ones. A label or patient id changed in the label file is written over the row (the image is not read
again); the labels a command uses always come from the current table, never from the manifest.

Where it lives (`manifest_dir`): ``paths.cache_dir`` when set, else ``<data root>/.lungnet/`` when the data root
can be written (and has a write permission bit), else the user cache (``$XDG_CACHE_HOME/lungnet`` or
``~/.cache/lungnet``) under
``manifests/``; a read-only data root works. The file is JSON (no pyarrow needed), written atomically (temporary
file and rename) with its format's version (`MANIFEST_VERSION`): one of another version is scanned again, not
misread. It is untrusted on read: every value is type- and range-checked (`lungnet.data.manifest_rows`), and a file
that is not the expected JSON or holds a wrong type or value is rebuilt with a warning naming the row and the value,
never a crash.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
from pathlib import Path

import pandas as pd

from lungnet.data.checks import check_paths
from lungnet.data.manifest_rows import FIELDS, MANIFEST_VERSION, MAX_TEXT, BadValue, Rows, header, rows_of
from lungnet.errors import WriteError
from lungnet.io import atomic_write, check_writable, printable

log = logging.getLogger(__name__)


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


def read_manifest(path: Path) -> tuple[dict[str, dict], str | None] | None:
    """The manifest's rows by path and the data set whose labels they hold; None when there is none, or (logged)
    when it cannot be trusted or was written by another version: its files are then scanned again."""
    got = read_rows(path)
    return None if got is None else ({p: got[0].row(i) for p, i in got[0].index.items()}, got[1])


@contextlib.contextmanager
def gc_paused():
    """No cyclic garbage collection inside. A manifest's rows are a list and a tuple per file, none in a cycle, and
    making 100k of them otherwise sets off full collections over a heap that grows as they are made: 0.1-0.5 s of
    the 1.4-1.9 s a command's setup takes at 64k files (docs/history/benchmarks.md)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def read_rows(path: Path) -> tuple[Rows, str | None] | None:
    """`read_manifest` as `Rows`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("Manifest %s cannot be read (%s): rebuilding it", printable(path), exc)
        return None
    with gc_paused():
        return _rows_of_text(path, text)


def _rows_of_text(path: Path, text: str) -> tuple[Rows, str | None] | None:
    """`read_rows` of the manifest's text, every value checked; None (logged) when it cannot be trusted."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        log.warning("Manifest %s is not valid JSON (%s): rebuilding it", printable(path), str(exc)[:120])
        return None
    try:
        verdict, files, source = header(data)
    except BadValue as exc:
        log.warning(
            "Manifest %s is not a version %d manifest (%s): rebuilding it", printable(path), MANIFEST_VERSION, exc
        )
        return None
    if verdict != "ok":
        log.warning(
            "Manifest %s is version %s, written by %s lungnet (this one reads version %d, which keeps each file's "
            "label and patient id): scanning the data set again",
            printable(path),
            data["version"],
            "an older" if verdict == "old" else "a newer",
            MANIFEST_VERSION,
        )
        return None
    rows, bad = rows_of(files)
    if rows is None:
        log.warning("Manifest %s: row %d holds a wrong type or value (%s): rebuilding it", printable(path), *bad)
        return None
    return rows, source


def write_manifest(path: Path, rows: dict[str, dict], source: str | None = None) -> bool:
    """Writes the manifest atomically (``source``: the data set whose labels its rows hold); a folder that cannot be
    written only warns (the next command re-scans)."""
    files = [[rows[p][k] for k in FIELDS] for p in sorted(rows)]
    text = json.dumps({"version": MANIFEST_VERSION, "fields": list(FIELDS), "source": source, "files": files})
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


def _plan(paths: list[str], old: Rows, decode: set[str]) -> tuple[dict[str, int], list[tuple]]:
    """Splits ``paths`` into the manifest rows still valid (same size and mtime, decoded when it must be), as each
    path's row number, and the files to scan, each as (path, (size, mtime) or None, decode)."""
    kept, todo = {}, []
    size, mtime, decoded, index = old.cols["size"], old.cols["mtime_ns"], old.cols["decoded"], old.index
    for p in dict.fromkeys(paths):
        st, i = _stat(p), index.get(p)
        if st is not None and i is not None and size[i] == st[0] and mtime[i] == st[1]:
            if decoded[i] or p not in decode:
                kept[p] = i
                continue
        todo.append((p, st, p in decode))
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


def _cell(value: object) -> str | None:
    """A label or patient cell as the manifest keeps it: its text, or None when blank or absent (or too long)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    text = str(value)
    return text if text and len(text) <= MAX_TEXT else None


def _labels(table: pd.DataFrame, paths: list[str]) -> dict[str, tuple[str | None, str | None]]:
    """Each file's (label, patient id) as the current table gives them (None: no such column, or a blank cell); a
    file whose rows give two labels (a conflict the checks report) or two patients has None for it. ``paths``: the
    table's ``path`` column as strings."""
    blank = [None] * len(table)
    cells = [_cells(table[c]) if c in table else blank for c in ("label", "patient")]
    if len(set(paths)) == len(paths):  # one row per file (the usual table): nothing to reconcile
        return dict(zip(paths, zip(*cells, strict=True), strict=True))
    out: dict[str, tuple[str | None, str | None]] = {}
    for path, label, patient in zip(paths, *cells, strict=True):
        value = (label, patient)
        if path in out:
            value = tuple(a if a == b else None for a, b in zip(out[path], value, strict=True))
        out[path] = value
    return out


def _cells(column: pd.Series) -> list[str | None]:
    """`_cell` of each value of ``column``, worked out once per distinct value."""
    values = column.tolist()
    try:
        said = {v: _cell(v) for v in set(values)}
    except TypeError:  # an unhashable cell (not from a label file): one by one
        return [_cell(v) for v in values]
    return [said[v] for v in values]


def _keep(
    manifest: Path,
    old: tuple[dict[str, dict], str | None],
    scanned: tuple[dict, dict, list],
    labels: dict[str, tuple[str | None, str | None]],
    source: str | None,
    write: bool,
) -> None:
    """Logs what the scan reused and rewrites the manifest when a file was scanned, removed or relabelled.

    Args:
        manifest: the manifest file.
        old: the rows it held, and the data set whose labels they hold.
        scanned: the rows kept (unchanged files), the rows found (files scanned now) and the files scanned.
        labels: `_labels` of the current table.
        source: the data set whose labels these are.
        write: rewrite the manifest when it changed (False: only log).
    """
    (rows, old_source), (kept, found, todo) = old, scanned
    label, patient, size, mtime = (rows.cols[k] for k in ("label", "patient", "size", "mtime_ns"))
    relabelled = {p for p, i in kept.items() if (label[i], patient[i]) != labels[p]}
    for p, e in found.items():
        e["label"], e["patient"] = labels[p]
    others = [i for p, i in rows.index.items() if p not in kept and p not in found and _stat(p) == (size[i], mtime[i])]
    removed = len(rows.index) - len(kept) - len(others) - sum(p in rows.index for p in found)
    log.info(
        "manifest: %d unchanged, %d re-scanned, %d removed, %d with a new label or patient id (%s)",
        len(kept),
        len(todo),
        removed,
        len(relabelled),
        manifest,
    )
    if write and (todo or removed or relabelled or old_source != source):
        kept_rows = {p: rows.row(i) for p, i in kept.items()}
        for p in relabelled:
            kept_rows[p]["label"], kept_rows[p]["patient"] = labels[p]
        other_rows = {rows.cols["path"][i]: rows.row(i) for i in others}
        if old_source != source:  # another data set's labels (nih6 and nih14 share a root): not this one's
            other_rows = {p: {**e, "label": None, "patient": None} for p, e in other_rows.items()}
        new = {p: {k: e[k] for k in FIELDS} for p, e in found.items() if e["keep"]}
        write_manifest(manifest, {**other_rows, **kept_rows, **new}, source)


def scan_table(
    table: pd.DataFrame,
    decode: bool,
    manifest: Path | None,
    workers: int | None = None,
    decode_only: set[str] | None = None,
    write: bool = True,
    source: str | None = None,
) -> pd.DataFrame:
    """`lungnet.data.checks.scan_files` through the data set's manifest: only new or changed files are read.

    Each manifest row also keeps the file's label and patient id as ``table`` gives them now (rows whose label
    changed in the label file while the image did not are rewritten, the image is not read again); the labels a
    command uses always come from ``table``, never from the manifest.

    Args:
        table: the source's rows (``path``; ``error`` for rows it already marked bad: those are not read;
            ``label`` and ``patient``, kept in the manifest).
        decode: decode the images (unreadable files, dHash), not only hash them.
        manifest: the manifest file (`manifest_path`; None: none kept).
        workers: scan processes (None: every available core).
        decode_only: with ``decode``, scan only these paths decoding (the others are hashed unless the manifest
            holds them decoded already; None: all of them).
        write: write the manifest back (False on the DDP ranks that only read what rank 0 wrote).
        source: the data set whose labels ``table`` holds (`lungnet.data.sources.Source.name`): the labels of
            files it does not list are kept only when the manifest holds the same data set's.

    Returns:
        The table with ``sha1``, ``error`` ('' for good files), ``dhash`` ('' when not decoded) and ``decoded``
        (whether the image was decoded, now or by an earlier scan: False for a file only hashed) columns.
    """
    paths = table["path"].astype(str).tolist()
    known = table["error"].fillna("").astype(str).tolist() if "error" in table else [""] * len(paths)
    wanted = [p for p, e in zip(paths, known, strict=True) if not e]
    old = (read_rows(manifest) if manifest is not None else None) or (Rows({k: () for k in FIELDS}), None)
    decoded = set(wanted) if decode and decode_only is None else set(decode_only or ()) if decode else set()
    kept, todo = _plan(wanted, old[0], decoded)
    found = _scan(todo, workers)
    if manifest is not None:
        _keep(manifest, old, (kept, found, todo), _labels(table, paths), source, write)
    cols = old[0].cols
    rows = [(p, e, kept.get(p)) for p, e in zip(paths, known, strict=True)]

    def column(key: str) -> list:
        """Each row's ``key``: the manifest row kept, else the scan's; None for a row with an error already."""
        return [None if e else cols[key][i] if i is not None else found[p][key] for p, e, i in rows]

    sha1, error, dhash, decoded = (column(k) for k in ("sha1", "error", "dhash", "decoded"))
    return table.assign(  # the four columns added in one copy of the table
        sha1=[s or "" for s in sha1],
        error=[e or _error(err, s, decode) for e, err, s in zip(known, error, sha1, strict=True)],
        dhash=[d if decode and d is not None else "" for d in dhash],
        decoded=[bool(d) for d in decoded],
    )


def _error(error: str, sha1: str, decode: bool) -> str:
    """A row's error: with ``decode``, whatever its scan found; without, only a file that could not be read."""
    return error if decode or sha1 == "" else ""
