"""Image files on disk: the suffixes lungnet reads (decoded by `lungnet.data.images`) and the folder walk that finds
them (`walk_images`, `image_files`, used by `lungnet.data.sources`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from operator import itemgetter
from pathlib import Path

from lungnet.io import printable

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"}


def walk_images(folder: Path, wanted: Callable[[Path], bool] | None = None) -> list[Path]:
    """All image files below ``folder``, sorted: `image_files` as Paths."""
    return [Path(p) for p in image_files(folder, wanted)]


def image_files(folder: str | os.PathLike, wanted: Callable[[Path], bool] | None = None) -> list[str]:
    """All image files below ``folder``, sorted as Paths sort, as path strings (a Path per file costs a few µs: a
    data set's setup reads 112,120 names).

    Symlinked folders are followed, except a link back to the folder being walked or one of its
    parents (a symlink loop) and a folder already visited through another link; both are skipped
    with a warning. Unreadable folders are skipped with a warning. File names that are not valid
    UTF-8 are kept (as Python's surrogate-escaped strings); hidden files are ignored.

    Args:
        folder: the folder to walk.
        wanted: which files count (default: those with an image suffix, `IMAGE_SUFFIXES`).
    """
    return [path for _, path, _ in _walk(folder, wanted)]


def image_names(folder: str | os.PathLike) -> dict[str, str]:
    """Each image file's name (no folder) and its path, for the files `image_files` finds (a name in two folders:
    the path that sorts last), without a path split per file."""
    return {name: path for _, path, name in _walk(folder, None)}


def _walk(folder: str | os.PathLike, wanted: Callable[[Path], bool] | None) -> list[tuple[str, str, str]]:
    """`image_files`' walk: (sort key, path, file name) of each file, sorted by key."""

    def on_error(exc: OSError) -> None:
        log.warning("Skipping %s: %s", printable(exc.filename), exc.strerror or exc)

    seen: set[str] = set()
    found: list[tuple[str, str, str]] = []
    top = os.fspath(Path(folder))  # normalised as a Path prints it
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True, onerror=on_error):
        real = os.path.realpath(dirpath)
        if real in seen:
            log.warning("Skipping %s: already visited as %s (symlinked folder)", printable(dirpath), printable(real))
            dirnames[:] = []
            continue
        seen.add(real)
        keep = []
        for name in sorted(dirnames):
            sub = os.path.join(dirpath, name)
            target = os.path.realpath(sub)
            if os.path.islink(sub) and (real == target or real.startswith(target.rstrip(os.sep) + os.sep)):
                log.warning(
                    "Skipping %s: symlink loop (points to %s, a parent folder)", printable(sub), printable(target)
                )
                continue
            keep.append(name)
        dirnames[:] = keep
        key = os.path.normcase(dirpath).replace(os.sep, "\0") + "\0"
        base = dirpath if dirpath.endswith(os.sep) else dirpath + os.sep  # os.path.join's result, without its cost
        for name in filenames:
            if name.startswith("."):
                continue
            path = base + name
            if wanted(Path(path)) if wanted else name[name.rfind(".") :].lower() in IMAGE_SUFFIXES:
                found.append((key + os.path.normcase(name), path, name))
    # the order of sorted(paths): part by part, case-folded as the OS folds, which is the order of the paths' strings
    # with NUL (below every character a name can hold) for the separator; Path's own comparison is a Python call per
    # pair (~50 ms of CPU for 4000 files)
    found.sort(key=itemgetter(0))
    return found
