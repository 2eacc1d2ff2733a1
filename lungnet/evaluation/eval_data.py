"""The data an evaluation scores: the checkpoint's own data config (with overrides), its splits recomputed and
verified, another data set (an external evaluation), or every image at a root (``split=all``) in the layout of the
checkpoint's data set (or ``data=``): its label file for NIH (``Data_Entry_2017.csv`` + ``images/``), class
folders for the others."""

from __future__ import annotations

from pathlib import Path

from lungnet.artifacts.checkpoint import LoadedModel
from lungnet.data.datamodule import LungDataModule
from lungnet.data.multi import resolve_root
from lungnet.data.sources import DataError, FolderSource, LabelledFolderSource, Source
from lungnet.data.splits import ExpectedSplits, write_splits
from lungnet.evaluation import external
from lungnet.io import write_csv


def data_config(loaded: LoadedModel, overrides: dict) -> dict:
    """The checkpoint's data config with the non-null overrides applied; its split seed always its own (a chosen
    ``data=<its data set>`` carries the default one), so its splits are recomputed as they were trained."""
    cfg = dict(loaded.data)
    cfg.update({k: v for k, v in external.data_overrides(overrides).items() if v is not None})
    cfg["split_seed"] = loaded.split_seed
    return resolve_root(cfg)


def check_compatible(loaded: LoadedModel, dm: LungDataModule) -> None:
    """Refuses data whose labels differ from the checkpoint's (another dataset, or a changed list)."""
    if list(dm.labels) != list(loaded.labels) or dm.multilabel != loaded.multilabel:
        raise DataError(
            f"Checkpoint {loaded.path} was trained on labels {loaded.labels} but the data "
            f"'{dm.source.name}' at {dm.source.root} has labels {dm.labels}: use a matching dataset"
        )


def all_images_source(source: Source, loaded: LoadedModel) -> Source:
    """What ``split=all`` reads at ``source.root``: every image, in the layout of the checkpoint's data set.

    A data set labelled by a file (NIH: ``Data_Entry_2017.csv`` and its images, multi-label ``nih14`` included) is
    read by its own source, so its patients and metadata (the subgroup section) come along. A class-folder data set
    is read as ``<root>/<class>/`` (or ``<root>/<split>/<class>/``) folders named like the checkpoint's labels,
    whatever set they hold (`LabelledFolderSource`; a synthetic checkpoint's root is read, not generated into).

    Raises:
        DataError: class folders for a multi-label checkpoint.
    """
    if not isinstance(source, FolderSource):
        return source
    if loaded.multilabel:
        raise DataError(
            f"split=all reads {source.root} as <root>/<class>/ folders (data set '{source.name}'), which cannot "
            "hold multi-label targets"
        )
    return LabelledFolderSource(source.root, loaded.labels)


def build_eval_data(
    loaded: LoadedModel, overrides: dict, split: str, run_dir: Path, cache_dir: str | None = None
) -> LungDataModule:
    """The DataModule for evaluating ``loaded`` on ``split`` (``all``: every image, no split).

    ``data=<another data set>`` (``overrides`` with another source or name) is an external evaluation
    (`lungnet.evaluation.external`); ``split=all`` and external evaluations refuse images the checkpoint was
    trained or validated on (``dm.report["training_overlap"]``), before anything is written into ``run_dir``.
    A split of the checkpoint's own data decodes only that split's images (`LungDataModule.scored_split`) and every
    scan goes through the data set's manifest (``cache_dir``: the command's ``paths.cache_dir``).
    """
    if external.is_external(loaded, overrides):
        dm = external.build_external_data(loaded, overrides, split, None)
        ext_cfg = external.external_config(loaded, overrides)
        dm.report["training_overlap"] = external.check_training_overlap(loaded, dm, split, ext_cfg)
        return write_data_records(dm, run_dir, split)
    cfg = data_config(loaded, overrides)
    # the splits are recomputed from the data config and split seed: they must still hold the training-time images
    allow = bool(cfg.get("allow_leakage"))
    expected = None if split == "all" else ExpectedSplits.of(loaded.hparams, loaded.path, "evaluate", allow)
    held = None if split == "all" else run_dir  # split=all: nothing written before the overlap check
    dm = LungDataModule(cfg, loaded.spec, seed=loaded.seed, run_dir=held, expected_splits=expected, cache_dir=cache_dir)
    if split == "all":
        dm.source = all_images_source(dm.source, loaded)
        check_compatible(loaded, dm)
        table = dm.load_table(all_images=True)
        dm.table = table
        dm.datasets["all"] = dm.make_dataset(table, train=False)
        dm.report["training_overlap"] = external.check_training_overlap(loaded, dm, split, cfg)
        return write_data_records(dm, run_dir, split)
    check_compatible(loaded, dm)
    dm.scored_split = split
    dm.setup("test")
    return dm


def write_data_records(dm: LungDataModule, run_dir: Path | None, split: str) -> LungDataModule:
    """Writes what loading a folder or an external data set found, once its images passed the overlap check:
    ``bad_files.csv``, and for a split of an external data set its scored rows (``splits/``)."""
    if run_dir is None:
        return dm
    dm.run_dir = Path(run_dir)
    if dm.bad_files is not None:
        write_csv(dm.run_dir / "bad_files.csv", dm.bad_files)
    if split != "all":
        write_splits(dm.table, dm.run_dir)
    return dm
