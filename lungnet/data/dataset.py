"""A torch Dataset over a source table, and the epoch-keyed sampler that makes training resumable exactly.

Shuffling and augmentation are pure functions of ``(seed, epoch, index)``: `EpochSampler` yields
``(epoch, index)`` keys (Lightning calls its ``set_epoch``), and `XrayDataset` seeds the
albumentations pipeline from the key before transforming that item. No global or per-worker
random state is involved, so a run resumed from a checkpoint, or run with any ``num_workers``,
sees exactly the same batches as an uninterrupted one.
"""

from __future__ import annotations

import copy
import ctypes
import functools
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import albumentations as A
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler, Subset

from lungnet.data.cache import PreparedReader
from lungnet.data.images import read_bytes, read_image
from lungnet.data.transforms import Normalize, unit_range

# numpy's SeedSequence constants (numpy/random/bit_generator.pyx): `derive_seed` hashes as it does, in Python
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R, _M32, _POOL = 0xCA01F9DD, 0x4973F715, 0xFFFFFFFF, 4
_PAIRS = [(src, dst) for src in range(_POOL) for dst in range(_POOL) if src != dst]


def derive_seed(*keys: int) -> int:
    """A well-mixed 32-bit seed from integers (e.g. seed, epoch, index); equal keys give equal seeds.

    The value is ``np.random.SeedSequence([k & 0xFFFFFFFF for k in keys]).generate_state(1)[0]``, computed in plain
    Python (its hashmix and mix steps written out): making a SeedSequence costs more, and the loader derives seven
    seeds per image.
    """
    words = [int(k) & _M32 for k in keys]
    words += [0] * (_POOL - len(words))
    pool, h = [], _INIT_A
    for word in words[:_POOL]:  # hashmix(word)
        value, h = word ^ h, (h * _MULT_A) & _M32
        value = (value * h) & _M32
        pool.append(value ^ (value >> 16))
    feed = [(pool, src, dst) for src, dst in _PAIRS] + [([w], 0, dst) for w in words[_POOL:] for dst in range(_POOL)]
    for source, src, dst in feed:  # pool[dst] = mix(pool[dst], hashmix(source[src]))
        value, h = source[src] ^ h, (h * _MULT_A) & _M32
        value = (value * h) & _M32
        value = (_MIX_L * pool[dst] - _MIX_R * (value ^ (value >> 16))) & _M32
        pool[dst] = value ^ (value >> 16)
    value = ((pool[0] ^ _INIT_B) * ((_INIT_B * _MULT_B) & _M32)) & _M32  # generate_state(1)
    return value ^ (value >> 16)


class _Lazy:
    """A random generator made from its seed on first use: ``np.random.default_rng(seed)`` or ``random.Random(seed)``.

    Seeding a pipeline per image made both generators for every step (~40 us a step, a fifth of the prepared store's
    CPU time per image), though most steps draw from one of them only, and a step not applied from neither.
    """

    def __init__(self, make: Callable, seed: int) -> None:
        self._make, self._seed = make, seed

    def __getattr__(self, name: str):
        if name.startswith("__"):  # protocols (pickle, copy) find nothing here
            raise AttributeError(name)
        rng = self.__dict__.get("_rng")
        if rng is None:
            rng = self._rng = self._make(self._seed)
        return getattr(rng, name)


def seed_transform(transform: A.BaseCompose | A.BasicTransform, seed: int) -> None:
    """Seeds an albumentations pipeline; each step gets its own stream (no correlated coin flips)."""
    children = getattr(transform, "transforms", None) or []
    # what set_random_seed sets, each generator made when first drawn from (a BaseCompose's would also seed every
    # child with ``seed``, which the loop below overwrites: a third of the loader's time per image at 224 px)
    transform.seed = seed
    transform.random_generator = _Lazy(np.random.default_rng, seed)
    transform.py_random = _Lazy(random.Random, seed)
    for i, child in enumerate(children):
        seed_transform(child, derive_seed(seed, i + 1))


def keep_large_buffers(worker_id: int | None = None) -> None:
    """Lets glibc reuse freed image-sized buffers instead of returning them to the system (a DataLoader
    ``worker_init_fn``). By default every buffer above 32 MB and, after trimming, many smaller ones come from fresh
    ``mmap`` pages, and touching them again costs a page fault per 4 KB: half the time of normalising a 1024 px
    image into three float channels. Does nothing where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    if hasattr(libc, "mallopt"):
        libc.mallopt(-3, 256 << 20)  # M_MMAP_THRESHOLD: blocks below 256 MB come from the heap
        libc.mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD: keep up to 512 MB of freed heap for reuse


def pixel_reader(verified: bool) -> Callable[[str], np.ndarray]:
    """The loaders' reader: `read_image` keeping 8-bit images as uint8, so resizing and augmenting run on bytes.

    The file is read whole first (`read_bytes`: one open) and decoded from memory: `read_image` given a path opens it
    three times (size, DICOM magic, decoder), and Pillow reads a PNG in many small pieces (one or more per chunk).

    Args:
        verified: every file was decoded whole at setup (``data.verify``): `read_image` then skips its second pass
            over a PNG's compressed data (the check for missing rows, a third of the read time at 1024 px).
    """
    return functools.partial(_read_whole, verified=verified)


def _read_whole(path: str, verified: bool) -> np.ndarray:
    return read_image(path, keep_uint8=True, verified=verified, data=read_bytes(path))


class SeededPipeline:
    """albumentations pipeline + `Normalize`: image (H, W), uint8 or float in [0, 1] -> tensor (C, H, W).

    The image is resized and augmented in its own type (uint8 for 8-bit files and the prepared store), and
    converted to float and normalised last.

    Args:
        transform: resize and augmentation (`lungnet.data.transforms.build_transform`).
        normalize: channel layout and standardisation; None: the output is a uint8 tensor (1, H, W), converted
            and normalised on the accelerator (``data.gpu_augment``, `lungnet.data.batch_augment`).
    """

    def __init__(self, transform: A.Compose, normalize: Normalize | None) -> None:
        self.transform = transform
        self.normalize = normalize

    def __call__(self, image: np.ndarray, seed: int | None = None) -> torch.Tensor:
        """Transforms one image; with ``seed`` every random draw of the augmentation comes from it."""
        if seed is not None:
            seed_transform(self.transform, seed)
        out = unit_range(self.transform(image=image[..., None])["image"])
        if self.normalize is not None:
            return self.normalize(out)
        if out.dtype != np.uint8:
            out = np.rint(out * 255.0).astype(np.uint8)
        return torch.from_numpy(np.ascontiguousarray(out)).unsqueeze(0)


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` keys: a seeded permutation (or weighted draw) that depends only on (seed, epoch).

    Args:
        n: dataset length.
        seed: run seed.
        shuffle: permute (False: 0..n-1 in order).
        weights: per-item sampling weights; draws ``num_samples`` items with replacement (class balance).
        num_samples: items per epoch with ``weights`` (default ``n``).
    """

    def __init__(
        self,
        n: int,
        seed: int,
        shuffle: bool = True,
        weights: Sequence[float] | None = None,
        num_samples: int | None = None,
    ) -> None:
        self.n = int(n)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.weights = torch.as_tensor(weights, dtype=torch.double) if weights is not None else None
        self.num_samples = int(num_samples or n)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch (also after resuming)."""
        self.epoch = int(epoch)

    def indices(self) -> list[int]:
        """This epoch's item order."""
        gen = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 0x5A3))
        if self.weights is not None:
            return torch.multinomial(self.weights, self.num_samples, replacement=True, generator=gen).tolist()
        if self.shuffle:
            return torch.randperm(self.n, generator=gen).tolist()
        return list(range(self.n))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return iter([(epoch, i) for i in self.indices()])

    def __len__(self) -> int:
        return self.num_samples if self.weights is not None else self.n


class XrayDataset(Dataset):
    """Images and targets of one split.

    Items are addressed by an index, or by an ``(epoch, index)`` key from `EpochSampler`: the key
    seeds the augmentation, so the item is the same whenever and wherever (worker) it is loaded.

    Args:
        table: rows of the source table (``path`` and ``target`` or one column per label).
        labels: the ordered label list.
        multilabel: targets are float vectors (NaN = unknown) rather than class indices.
        pipeline: image (H, W) float in [0, 1] -> tensor (C, H, W); a `SeededPipeline` is seeded per key.
        reader: image reader (the default decodes the file, 8-bit images as uint8; the prepared store swaps in
            its own).
        seed: run seed mixed into every item's augmentation seed.
    """

    def __init__(
        self,
        table: pd.DataFrame,
        labels: list[str],
        multilabel: bool,
        pipeline: Callable[[np.ndarray], torch.Tensor],
        reader: Callable[[str], np.ndarray] | None = None,
        seed: int = 0,
    ) -> None:
        self.table = table.reset_index(drop=True)
        self.paths = self.table["path"].tolist()
        self.labels = labels
        self.multilabel = multilabel
        if multilabel:
            self.targets = torch.tensor(self.table[labels].to_numpy(np.float32))
        else:
            self.targets = torch.tensor(self.table["target"].to_numpy(np.int64))
        self.pipeline = pipeline
        self.reader = reader or pixel_reader(verified=False)
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        if isinstance(key, tuple | list):
            epoch, index = int(key[0]), int(key[1])
            image = self.reader(self.paths[index])
            if isinstance(self.pipeline, SeededPipeline):
                image = self.pipeline(image, seed=derive_seed(self.seed, epoch, index))
            else:
                image = self.pipeline(image)
        else:
            index = int(key)
            image = self.pipeline(self.reader(self.paths[index]))
        return {"image": image, "target": self.targets[index], "path": self.paths[index], "index": index}

    def class_counts(self) -> np.ndarray:
        """Images per class (single-label) or positives per label (multi-label, NaN ignored)."""
        if self.multilabel:
            return np.nansum(self.targets.numpy(), axis=0)
        return np.bincount(self.targets.numpy(), minlength=len(self.labels))


def _bytes_normalize(dataset) -> Normalize | None:
    """The `Normalize` that would end ``dataset``'s pipeline when it can yield bytes instead: an evaluation pipeline
    (resize and pad only) over the prepared store (uint8 pixels); None otherwise."""
    pipeline = getattr(dataset, "pipeline", None)
    if not isinstance(pipeline, SeededPipeline) or pipeline.normalize is None:
        return None
    if not isinstance(getattr(dataset, "reader", None), PreparedReader) or _augments(pipeline.transform):
        return None
    return pipeline.normalize


@contextmanager
def bytes_out(dataset: Dataset | None) -> Iterator[Normalize | None]:
    """While open, an evaluation dataset read from the prepared store yields its uint8 pixels (1, H, W) and gives
    the `Normalize` its consumer applies per batch (`Normalize.batch`, on the model's device): the loader then only
    copies bytes, a twelfth of what a 3-channel float32 image moves, and the model sees the same numbers. Otherwise
    (augmentation, files decoded to float, a pipeline already without `Normalize`) it changes nothing and gives None.

    Loaders must be created inside it (workers take their copy of the dataset when they start).

    Args:
        dataset: an `XrayDataset`, a `torch.utils.data.Subset` of one, or None.
    """
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    normalize = _bytes_normalize(base)
    if normalize is None:
        yield None
        return
    pipeline = base.pipeline
    base.pipeline = SeededPipeline(pipeline.transform, None)
    try:
        yield normalize
    finally:
        base.pipeline = pipeline


def as_bytes(dataset: Dataset) -> tuple[Dataset, Normalize | None]:
    """A copy of ``dataset`` that yields uint8 pixels, and the `Normalize` its batches need (`bytes_out`'s terms,
    for a loader that outlives a ``with`` block: training's validation loader); ``(dataset, None)`` when it cannot."""
    normalize = _bytes_normalize(dataset)
    if normalize is None:
        return dataset, None
    out = copy.copy(dataset)
    out.pipeline = SeededPipeline(dataset.pipeline.transform, None)
    return out, normalize


RESIZES = (A.NoOp, A.Resize, A.LongestMaxSize, A.PadIfNeeded)  # uint8 in, the same uint8 out as before `Normalize`


def _augments(transform: A.Compose) -> bool:
    """Whether an albumentations pipeline does more than resize and pad (an augmentation, or a `A.Lambda`)."""
    return not all(isinstance(t, RESIZES) for t in transform.transforms)
