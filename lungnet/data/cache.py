"""Decode-once preprocessing cache: images decoded and resized to the training size, stored as uint8.

Decoding full-size X-rays every epoch starves the GPU. The cache decodes and resizes each image once
(with the same resize the pipeline uses), stores all of a split as one memory-mappable ``.npy``
array plus an index, and hands the Dataset a reader that returns the cached pixels. Augmentation
still runs per epoch on top. The cache key is a hash of every file's content hash and the
preprocessing (size, resize mode, cache format version): change a file or the size and a new
cache is built; an unchanged data set reuses it across runs.
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

from lungnet.data.images import read_image
from lungnet.data.transforms import build_transform

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def cache_key(hashes: Sequence[str], image_size: int, resize: str, downsample_to: int | None = None) -> str:
    """Hash of the files' content hashes (in order) and the preprocessing."""
    extra = f"down{int(downsample_to)}|" if downsample_to else ""  # keys of caches built without it are unchanged
    digest = hashlib.sha256(f"v{CACHE_VERSION}|{image_size}|{resize}|{extra}".encode())
    for h in hashes:
        digest.update(h.encode())
    return digest.hexdigest()[:24]


class CachedReader:
    """Reads images from a cache array by path; picklable (each DataLoader worker maps the file itself).

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
            self._array = np.load(self.array_path, mmap_mode="r")
        return self._array[self.index[path]].astype(np.float32) / 255.0


def _decode(path: str, transform) -> np.ndarray:
    out = transform(image=read_image(path)[..., None])["image"]
    out = out[..., 0] if out.ndim == 3 else out
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def build_cache(
    paths: Sequence[str],
    hashes: Sequence[str],
    image_size: int,
    resize: str,
    cache_dir: str | os.PathLike,
    workers: int = 4,
    downsample_to: int | None = None,
) -> CachedReader:
    """Returns a reader over a cache of ``paths``, building the cache when it does not exist yet.

    Args:
        paths: image files (already checked readable).
        hashes: their content hashes (sha1), in the same order.
        image_size: training side in pixels.
        resize: ``squash`` or ``pad``, as in the pipeline.
        cache_dir: where cache files live (shared between runs).
        workers: decoding threads.
        downsample_to: first resize to this side (`lungnet.data.transforms.build_transform`); part of the key.
    """
    cache_dir = Path(cache_dir).expanduser()
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(hashes, image_size, resize, downsample_to)
    array_path, index_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    if array_path.exists() and index_path.exists():
        index = json.loads(index_path.read_text(encoding="utf-8", errors="surrogateescape"))
        if set(index) == set(paths):
            log.info("Using image cache %s (%d images)", array_path, len(index))
            return CachedReader(array_path, index)
        log.info("Image cache %s lists other files: rebuilding", array_path)
    transform = build_transform(image_size, None, resize, downsample_to)
    tmp = cache_dir / f".{key}.{os.getpid()}.npy.tmp"
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), image_size, image_size))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, img in enumerate(
            tqdm(
                pool.map(lambda p: _decode(p, transform), paths),
                total=len(paths),
                desc=f"Caching images at {image_size}px",
                unit="img",
                leave=False,
            )
        ):
            array[i] = img
    array.flush()
    del array
    os.replace(tmp, array_path)
    index = {p: i for i, p in enumerate(paths)}
    tmp_index = cache_dir / f".{key}.{os.getpid()}.json.tmp"
    tmp_index.write_text(json.dumps(index), encoding="utf-8", errors="surrogateescape")
    os.replace(tmp_index, index_path)
    log.info("Built image cache %s (%d images, %.1f MB)", array_path, len(paths), array_path.stat().st_size / 1e6)
    return CachedReader(array_path, index)
