"""The prepared store: every image decoded once, resized to the working resolution and kept as uint8 on disk.

Decoding a full-size X-ray costs far more than everything done to it afterwards at the training size (a 1024 px
PNG: ~8 ms to decode, ~1 ms to resize and augment at 224 px on uint8). The store decodes each image once, applies
the pipeline's own resize (``data.downsample_to`` first where set, then ``data.resize`` to ``data.prepared_size``,
the model's input size unless set: squash, letterbox-pad keeping the aspect ratio, or centre crop, exactly as the
direct path does) and keeps all of a split as one memory-mapped ``.npy`` array (N, S, S) of uint8 plus an index.
A DataLoader worker then copies bytes: no decoding, no float conversion before augmentation
(`lungnet.data.dataset.SeededPipeline` augments on uint8 and normalises last).

The store is found again by a key over the preprocessing (format version, side, resize, downsample_to) and the
list of files; the index records each file's size and modification time, and a store whose files changed since
(or whose index or array do not look like one this module wrote) is rebuilt. Nothing here needs the files'
content hashes, so it does not depend on the data checks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lungnet.data.images import ImageReadError, native_size, read_image
from lungnet.data.transforms import build_transform, unit_range

log = logging.getLogger(__name__)

STORE_VERSION = 2  # 1: the float-returning cache keyed by content hashes


def store_key(paths: Sequence[str], side: int, resize: str, downsample_to: int | None = None) -> str:
    """Hash of the preprocessing and the files (in order): one store per split and preprocessing."""
    digest = hashlib.sha256(f"v{STORE_VERSION}|{int(side)}|{resize}|{int(downsample_to or 0)}|".encode())
    for path in paths:
        digest.update(os.fsencode(path) + b"\0")
    return digest.hexdigest()[:24]


def file_stamp(path: str) -> list[int]:
    """[size, mtime_ns] of a file: what says it changed since the store was built ([-1, -1]: missing)."""
    try:
        st = os.stat(path)
    except OSError:
        return [-1, -1]
    return [int(st.st_size), int(st.st_mtime_ns)]


class PreparedReader:
    """Reads prepared images by path as uint8 (S, S); picklable (each DataLoader worker maps the file itself).

    Args:
        array_path: the ``.npy`` file (N, S, S) uint8.
        index: path -> row.
    """

    def __init__(self, array_path: str | os.PathLike, index: dict[str, int]) -> None:
        self.array_path = str(array_path)
        self.index = index
        self._array: np.ndarray | None = None

    def __getstate__(self) -> dict:
        return {"array_path": self.array_path, "index": self.index, "_array": None}

    def __call__(self, path: str) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.array_path, mmap_mode="r").view(np.ndarray)  # no np.memmap per row
        return np.array(self._array[self.index[path]])  # a copy: the pipeline may write into it


def prepare_image(path: str, transform) -> np.ndarray:
    """One image decoded and resized by ``transform`` (no augmentation), as uint8 (S, S)."""
    out = unit_range(transform(image=read_image(path, keep_uint8=True)[..., None])["image"])
    return out if out.dtype == np.uint8 else np.rint(out * 255.0).astype(np.uint8)


def _valid_index(index_path: Path, array_path: Path, paths: Sequence[str], side: int) -> bool:
    """True when the index and array on disk are a store of exactly ``paths`` whose files have not changed."""
    try:
        index = json.loads(index_path.read_text(encoding="utf-8", errors="surrogateescape"))
        array = np.load(array_path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        log.warning("Prepared store %s is unreadable (%s): rebuilding", array_path, exc)
        return False
    files = index.get("files") if isinstance(index, dict) else None
    if array.dtype != np.uint8 or array.shape != (len(paths), side, side) or not isinstance(files, list):
        log.warning("Prepared store %s does not match its index: rebuilding", array_path)
        return False
    if [f[0] if isinstance(f, list) and f else None for f in files] != list(paths):
        log.info("Prepared store %s lists other files: rebuilding", array_path)
        return False
    changed = [p for p, f in zip(paths, files, strict=True) if f[1:] != file_stamp(p)]
    if changed:
        log.info(
            "Prepared store %s: %d image(s) changed since it was built (%s): rebuilding",
            array_path,
            len(changed),
            changed[0],
        )
        return False
    return True


def build_store(
    paths: Sequence[str],
    side: int,
    resize: str,
    cache_dir: str | os.PathLike,
    workers: int,
    downsample_to: int | None = None,
) -> PreparedReader:
    """Returns a reader over the prepared store of ``paths``, building (or rebuilding) it when needed.

    Args:
        paths: image files (already checked readable).
        side: the working resolution in pixels (``data.prepared_size``, or the model's input size).
        resize: ``squash``, ``pad`` or ``crop``, as in the pipeline.
        cache_dir: where stores live (shared between runs).
        workers: decoding threads.
        downsample_to: first resize to this side (`lungnet.data.transforms.build_transform`).
    """
    cache_dir = Path(cache_dir).expanduser()
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = store_key(paths, side, resize, downsample_to)
    array_path, index_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    if array_path.exists() and index_path.exists() and _valid_index(index_path, array_path, paths, side):
        log.info("Using prepared store %s (%d images at %d px)", array_path, len(paths), side)
        return PreparedReader(array_path, {p: i for i, p in enumerate(paths)})
    stamps = [file_stamp(p) for p in paths]  # taken before decoding: a file written meanwhile counts as changed
    transform = build_transform(side, None, resize, downsample_to)
    tmp = cache_dir / f".{key}.{os.getpid()}.npy.tmp"
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), side, side))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        images = pool.map(lambda p: prepare_image(p, transform), paths)
        for i, img in enumerate(tqdm(images, total=len(paths), desc=f"Preparing images at {side}px", leave=False)):
            array[i] = img
    array.flush()
    del array
    os.replace(tmp, array_path)
    index = {"version": STORE_VERSION, "side": side, "resize": resize, "downsample_to": downsample_to}
    index["files"] = [[p, *s] for p, s in zip(paths, stamps, strict=True)]
    tmp_index = cache_dir / f".{key}.{os.getpid()}.json.tmp"
    tmp_index.write_text(json.dumps(index), encoding="utf-8", errors="surrogateescape")
    os.replace(tmp_index, index_path)
    log.info("Built prepared store %s (%d images, %.1f MB)", array_path, len(paths), array_path.stat().st_size / 1e6)
    return PreparedReader(array_path, {p: i for i, p in enumerate(paths)})


def larger_than(paths: Sequence[str], side: int, sample: int = 8) -> bool:
    """True when any of ``sample`` images spread over ``paths`` is larger than ``side`` px (read from headers): then
    decoding costs more than copying prepared bytes, and the store pays from the second epoch on."""
    for i in np.linspace(0, len(paths) - 1, min(sample, len(paths))).astype(int) if paths else []:
        try:
            if max(native_size(paths[int(i)])) > side:
                return True
        except ImageReadError:
            continue  # listed by the data checks; the store builds without it only if it is readable
    return False
