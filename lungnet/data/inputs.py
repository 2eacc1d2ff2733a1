"""Files to classify as a torch Dataset: each file read once, its SHA-1 and its decode from the same bytes.

`predict.py` (`lungnet.serve.inference.Predictor.predict_iter`) reads, hashes, decodes and preprocesses in DataLoader
workers (``num_workers``); the main process only runs the model. A file that cannot be read or preprocessed gives an
item with its ``error`` instead of raising, so one bad file never stops a worker or the run: it becomes an error row.
Batches are plain lists of `InputItem` (`collate_inputs`), in the order of the files.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from lungnet.data.checks import available_cores
from lungnet.data.images import ImageReadError, read_bytes, read_image
from lungnet.data.png import MAGIC, plain_png, short_pixel_data
from lungnet.data.preprocessing import stack
from lungnet.data.transforms import fit_within

AUTO_WORKERS_MAX = 4  # num_workers=null: this many at most, never more than the cores


@dataclass
class InputItem:
    """One file, read and preprocessed (or the reason why not).

    Attributes:
        index: position in the file list.
        file: the file as given.
        sha1: hex SHA-1 of its bytes ('' when they could not be read).
        tensor: the model input (an ensemble: one tensor per member), None on error.
        image: the decoded grayscale image (reduced to ``image_max_side``), kept only when asked for.
        error: why the file gives no prediction ('' when it does).
    """

    index: int
    file: str
    sha1: str = ""
    tensor: Any = field(default=None, repr=False)
    image: np.ndarray | None = field(default=None, repr=False)
    error: str = ""


class InputFiles(Dataset):
    """The files to classify; ``dataset[i]`` reads file ``i`` once, hashes and decodes its bytes and preprocesses.

    Args:
        files: the files.
        prep: the model's preprocessing (`lungnet.data.preprocessing.Preprocessing` or ``EnsembleInput``): its
            ``pipeline()`` is built in the process that uses it (picklable for any worker start method).
        keep_image: keep the decoded image in the item (heatmap overlays).
        image_max_side: with ``keep_image``, reduce the kept image to this long side (None: full size).
    """

    def __init__(self, files: Sequence[str], prep, keep_image: bool = False, image_max_side: int | None = None) -> None:
        self.files = [str(f) for f in files]
        self.prep = prep
        self.keep_image = keep_image
        self.image_max_side = image_max_side
        self._pipeline: Callable | None = None

    def __len__(self) -> int:
        return len(self.files)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pipeline": None}  # rebuilt in the worker (an ensemble's pipeline is a lambda)

    def __getitem__(self, index: int) -> InputItem:
        item = InputItem(index, self.files[index])
        try:
            data = read_bytes(item.file)
            item.sha1 = hashlib.sha1(data).hexdigest()
            image = decode(item.file, data)
            del data
            if self._pipeline is None:
                self._pipeline = self.prep.pipeline()
            item.tensor = self._pipeline(image)
        except ImageReadError as exc:
            item.error = exc.reason
            return item
        except Exception as exc:  # noqa: BLE001 - one odd file must not stop a batch job; it is reported
            item.tensor, item.error = None, f"cannot preprocess image ({exc})"
            return item
        if self.keep_image:  # only what an overlay needs is kept (the full decode is released here)
            kept = fit_within(image, self.image_max_side)
            item.image = kept.astype(np.float32) / 255.0 if kept.dtype == np.uint8 else kept  # [0, 1], as read_image
        return item


def decode(path: str, data: bytes) -> np.ndarray:
    """`read_image` of a file's bytes as the loaders read it: an 8-bit image as its uint8 grey levels (resized before
    any float work; `lungnet.data.transforms.Normalize` scales it), no full-resolution float array.

    A PNG's check for missing rows (`lungnet.data.png.short_pixel_data`, a second inflate of its pixel data: about a
    quarter of the read) is made only when the decode cannot rule it out: Pillow fills the rows a short stream lacks
    with zeros, in order, so a plain PNG (not interlaced, one frame, no orientation to apply) whose last row holds a
    non-zero pixel had them all.

    Raises:
        ImageReadError: as `read_image` does, the missing rows included.
    """
    image = read_image(path, keep_uint8=True, verified=True, data=data)
    if data.startswith(MAGIC) and (not plain_png(data) or not image[-1].any()):
        short = short_pixel_data(io.BytesIO(data))
        if short:
            raise ImageReadError(path, short)
    return image


def collate_inputs(items: list[InputItem]) -> list[InputItem]:
    """A DataLoader batch: the items (rows with errors included), their tensors views of one stacked batch (an
    ensemble: one per member), so a worker hands the main process one shared-memory block per batch, not one per
    image (each costs a segment, its file descriptor and their mapping)."""
    good = [item for item in items if item.tensor is not None]
    if not good:
        return items
    batch = stack([item.tensor for item in good])
    for k, item in enumerate(good):
        item.tensor = tuple(part[k] for part in batch) if isinstance(batch, tuple) else batch[k]
    return items


def decode_workers(requested: int | None, batches: int) -> int:
    """Worker processes for ``requested`` (None: min(`AUTO_WORKERS_MAX`, the cores)), never more than ``batches``;
    none for a single batch (nothing to overlap with the model: the start of a worker would only add to it)."""
    if batches < 2:
        return 0
    wanted = min(AUTO_WORKERS_MAX, available_cores()) if requested is None else int(requested)
    return max(0, min(wanted, batches))
