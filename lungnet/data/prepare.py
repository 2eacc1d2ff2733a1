"""``lungnet-prepare data=<name>``: scans a data set ahead of time and writes its manifest (issue #27 §1).

The scan every training, resumption and evaluation needs (every file hashed, every image decoded: unreadable files,
native size, dHash) runs here once, on every available core with a progress bar, into the data set's manifest
(`lungnet.data.manifest`); the next command reads it and re-scans only files whose size or mtime changed. Training
does the same on first use, so this command is optional: it moves the wait to a time of your choosing.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lungnet.data.checks import drop_repeated_rows
from lungnet.data.manifest import manifest_path, scan_table
from lungnet.data.multi import make_source, resolve_root
from lungnet.data.sources import DataError
from lungnet.data.splits import patients_from_names
from lungnet.schema import with_data_defaults

log = logging.getLogger(__name__)


def prepare(data_cfg: dict, cache_dir: str | None) -> Path:
    """Scans the data set of ``data_cfg`` into its manifest.

    Args:
        data_cfg: a ``data`` config (``conf/data/<name>.yaml`` with overrides).
        cache_dir: ``paths.cache_dir`` (None: the rules of `lungnet.data.manifest.manifest_dir`).

    Returns:
        The manifest file.

    Raises:
        DataError: the data set holds no image.
    """
    cfg = with_data_defaults(resolve_root(data_cfg))
    source = make_source(cfg)
    source.may_generate = True  # the user's own data config, as for training: a synthetic set is generated
    table = drop_repeated_rows(patients_from_names(source.scan(), cfg.get("patient_pattern")))
    if table.empty:
        raise DataError(f"No images found for dataset '{source.name}' under {source.root}")
    path = manifest_path(cache_dir, source.root)
    decode = bool(cfg["verify"]) or bool(cfg["near_duplicates"])
    scanned = scan_table(table, decode, path, cfg["scan_workers"], source=source.name)
    bad = int((scanned["error"] != "").sum())
    log.info("Prepared %s: %d image(s), %d unusable; manifest %s", source.name, len(scanned), bad, path)
    return path
