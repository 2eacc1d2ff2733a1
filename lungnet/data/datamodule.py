"""One LightningDataModule for every source: scan -> check -> split -> Datasets -> DataLoaders.

At setup it scans the source, lists unreadable files and images given two labels (``bad_files.csv``), assigns seeded
stratified/patient-grouped splits (``data.split_seed``), reports duplicate images (exact, and with
``near_duplicates`` perceptual; ``near_duplicates=group`` keeps near copies in one split) and shared patients
across splits (``data_report.json``) and writes the split files into the run directory. Training batches come from
an `EpochSampler`, so order and augmentation depend only on (seed, epoch, index).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Sampler

from lungnet.data import dataset as datasets
from lungnet.data.cache import PreparedReader, build_store, larger_than
from lungnet.data.checks import (
    bad_rows,
    check_class_sizes,
    check_training_classes,
    drop_repeated_rows,
    enforce_no_test_leak,
    handle_bad_files,
    leakage_report,
    mark_label_conflicts,
)
from lungnet.data.dataset import EpochSampler, SeededPipeline, XrayDataset, keep_large_buffers, pixel_reader
from lungnet.data.manifest import manifest_dir, manifest_path, scan_table
from lungnet.data.multi import MultiSource, make_source, sample_weights, source_shares
from lungnet.data.multi_splits import assign_multi_splits, sources_report
from lungnet.data.near_duplicates import group_near_duplicates
from lungnet.data.sources import DataError
from lungnet.data.split_cache import cached_assign_splits
from lungnet.data.splits import ExpectedSplits, changed_splits, patients_from_names, split_fingerprint, write_splits
from lungnet.data.transforms import Normalize, build_transform, check_intensity
from lungnet.io import write_json
from lungnet.models.specs import ModelSpec
from lungnet.schema import with_data_defaults

log = logging.getLogger(__name__)


def resolve_image_size(data_cfg: dict, spec: ModelSpec) -> int:
    """The input side a run trains and scores at: ``data.image_size``, or the model's own default when it is null.

    The one place the setting is resolved (training writes the result back into its data config, so the checkpoint,
    the datamodule and the preprocessing contract all hold the same number; the model spec calls it ``input_size``).
    """
    size = data_cfg.get("image_size")
    return int(spec.input_size if size is None else size)


class LungDataModule(pl.LightningDataModule):
    """Data for one run.

    Args:
        cfg: the ``data`` config (see ``conf/data/*.yaml``; missing keys, e.g. in old checkpoints, take the
            schema's defaults, `lungnet.schema.DataConfig`).
        spec: the model's spec (input size, mean/std, channels).
        seed: the training seed (data order and augmentation); the split is seeded by ``cfg["split_seed"]``.
        augment: albumentations steps for training (Hydra dicts).
        run_dir: where split files and reports are written (None: nowhere).
        expected_splits: the splits a checkpoint recorded (evaluation, resume, explanations): verified right
            after splitting, before anything is written to ``run_dir``.
        owns_data: True for training, whose data config is its own: a generated set (synthetic) may be written
            under ``data.root`` and the image cache under ``data.cache_dir``. False for every reader (evaluation,
            explanations, transfer), whose config comes from a checkpoint: nothing is generated, and the cache
            goes to this machine's default folder, never to a path a checkpoint names.
        cache_dir: this command's ``paths.cache_dir``, where the data set's manifest is kept (None: the rules of
            `lungnet.data.manifest.manifest_dir`).
    """

    def __init__(
        self,
        cfg: dict,
        spec: ModelSpec,
        seed: int = 0,
        augment: list | None = None,
        run_dir: str | Path | None = None,
        expected_splits: ExpectedSplits | None = None,
        owns_data: bool = False,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.cfg = with_data_defaults(cfg if owns_data else {k: v for k, v in cfg.items() if k != "cache_dir"})
        self.spec = spec
        self.seed = seed
        self.augment = list(augment or [])
        self.run_dir = Path(run_dir) if run_dir else None
        self.expected_splits = expected_splits
        self.source = make_source(self.cfg)
        self.source.may_generate = owns_data
        self.labels: list[str] = list(self.source.labels)
        self.multilabel = self.source.multilabel
        self.image_size = resolve_image_size(self.cfg, spec)
        self.prepared_size = int(self.cfg["prepared_size"] or self.image_size)  # the prepared store's side
        self.owns_data = owns_data
        self.table: pd.DataFrame | None = None
        self.datasets: dict[str, XrayDataset] = {}
        self.report: dict = {}
        self.bad_files: pd.DataFrame | None = None  # path, error of the unusable files `load_table` found
        self.cache_dir = cache_dir
        # evaluation of one split: only its images are decoded when the other splits reproduce the recorded ones
        self.scored_split: str | None = None

    # ------------------------------------------------------------------ setup
    def _is_writer(self) -> bool:
        trainer = self.trainer
        return self.run_dir is not None and (trainer is None or trainer.is_global_zero)

    def load_table(self, all_images: bool = False) -> pd.DataFrame:
        """Scans, checks and splits the source (``all_images``: every image is split ``all``)."""
        table = drop_repeated_rows(patients_from_names(self.source.scan(), self.cfg.get("patient_pattern")))
        if table.empty:
            raise DataError(f"No images found for dataset '{self.source.name}' under {self.source.root}")
        writer = self._is_writer()
        near = bool(self.cfg["near_duplicates"])
        decode = bool(self.cfg["verify"]) or (near and not all_images)
        lazy = decode and not near and not all_images and self._lazy_split() is not None
        scanned = self.scan(table, decode, decode_only=set() if lazy else None)
        scanned = mark_label_conflicts(scanned)  # one image under two labels: both rows are bad rows
        report = self.run_dir / "bad_files.csv" if writer else None
        policy = self.cfg["on_bad_file"]
        good = scanned["error"].to_numpy() == ""  # the usable rows (numpy: each pandas comparison costs more)
        self.bad_files = bad_rows(scanned, good)
        if all_images:
            table = handle_bad_files(scanned, policy, report)
            table["split"] = "all"
            return table
        # bad files are left out of the split as `skip` would, and reported once the splits hold (nothing is
        # written before a refusal below; a resumed run directory keeps its reports until its splits are verified)
        deferred = self.expected_splits is not None
        if policy == "error" and not deferred and not good.all():
            handle_bad_files(scanned, policy, report)  # refused at once, with the full list in bad_files.csv
        table = scanned[good].reset_index(drop=True)
        if not self.multilabel:
            check_class_sizes(table, self.labels, self.source.name, left_out=len(scanned) - len(table))
        if self.cfg["near_duplicates"] == "group":  # near copies kept on one side of every split lungnet makes
            table, grouped = group_near_duplicates(table, int(self.cfg["near_duplicate_threshold"]))
        table = self._assign_splits(table)
        if lazy:
            table, scanned = self._decode_scored(table, scanned)
            if table is None:  # the splits differ with the undecoded images presumed good: decode them all
                self.scored_split = None
                return self.load_table(all_images)
            self.bad_files = bad_rows(scanned, scanned["error"].to_numpy() == "")
        if deferred:
            self.expected_splits.verify(table, self.source.root)
        check_training_classes(table, self.labels, self.source.name, self.multilabel)
        handle_bad_files(scanned, policy, report)
        self.report = leakage_report(table, int(self.cfg["near_duplicate_threshold"]) if near else None)
        if self.cfg["near_duplicates"] == "group":
            self.report["near_duplicate_groups"] = grouped
        split = table["split"].to_numpy()
        self.report["sizes"] = {s: int((split == s).sum()) for s in ("train", "val", "test")}
        if isinstance(self.source, MultiSource):  # per set: sizes, findings known and unknown, copies across sets
            self.report["sources"] = sources_report(table, self.labels, self.source.members, self._source_shares(table))
            self.report["sources"]["source_balance"] = str(self.cfg["source_balance"])
        self.report["class_counts"] = (
            {s: table.loc[table["split"] == s, "label"].value_counts().to_dict() for s in ("train", "val", "test")}
            if not self.multilabel
            else {}
        )
        log.info(
            "Dataset %s: %s; duplicates across splits %s; shared patients %s",
            self.source.name,
            self.report["sizes"],
            self.report["duplicate_images"],
            self.report["shared_patients"],
        )
        if writer:  # written before the leakage check: a refused run shows the details
            write_json(self.run_dir / "data_report.json", self.report)
        enforce_no_test_leak(self.report, bool(self.cfg["allow_leakage"]))
        if self.report["sizes"]["train"] == 0:
            raise DataError(f"Dataset '{self.source.name}' has no training images after splitting")
        if writer:
            write_splits(table, self.run_dir)
        return table

    def _assign_splits(self, table: pd.DataFrame) -> pd.DataFrame:
        """Seeded splits (`lungnet.data.split_cache`); ``data=multi``: set by set (`lungnet.data.multi_splits`)."""
        cv = (self.cfg["cv_folds"], self.cfg["cv_fold"])
        if isinstance(self.source, MultiSource):
            return assign_multi_splits(table, self.source.members, int(self.cfg["split_seed"]), cv)
        return cached_assign_splits(
            manifest_dir(self.cache_dir, self.source.root),
            table,
            int(self.cfg["split_seed"]),
            self.cfg["val_fraction"],
            self.cfg["test_fraction"],
            self.cfg["carve_val"],
            *cv,
        )

    def _source_shares(self, table: pd.DataFrame) -> dict[str, float]:
        """Each set's share of the training draws under ``data.source_balance`` (recorded in data_report.json)."""
        train = table.loc[table["split"] == "train", "source"].value_counts().to_dict()
        return source_shares({n: int(train.get(n, 0)) for n in self.source.members}, str(self.cfg["source_balance"]))

    def _lazy_split(self) -> str | None:
        """The split an evaluation scores, when the checkpoint recorded its splits (else None: decode all)."""
        expected = self.expected_splits
        return self.scored_split if expected is not None and expected.recorded else None

    def scan(self, table: pd.DataFrame, decode: bool, decode_only: set[str] | None = None) -> pd.DataFrame:
        """`lungnet.data.manifest.scan_table` over the data set's manifest, once per node under DDP.

        Lightning's DDP children (``LOCAL_RANK`` > 0) start when rank 0 has set up its data already: they read the
        manifest it wrote and write none. Within a running process group (setup called by the trainer) local rank 0
        scans and writes while the others wait at a barrier, then read it.
        """
        manifest = manifest_path(self.cache_dir, self.source.root)
        workers, name = self.cfg["scan_workers"], self.source.name
        trainer = self.trainer
        grouped = trainer is not None and trainer.world_size > 1 and torch.distributed.is_initialized()
        local_rank = trainer.local_rank if grouped else int(os.environ.get("LOCAL_RANK", "0") or 0)
        if local_rank != 0:
            if grouped:
                trainer.strategy.barrier("lungnet-manifest")
            return scan_table(table, decode, manifest, workers, decode_only, write=False, source=name)
        try:
            return scan_table(table, decode, manifest, workers, decode_only, source=name)
        finally:
            if grouped:
                trainer.strategy.barrier("lungnet-manifest")

    def _decode_scored(self, table: pd.DataFrame, scanned: pd.DataFrame) -> tuple[pd.DataFrame | None, pd.DataFrame]:
        """Decodes the scored split's images once the splits (other images presumed readable) match the recorded
        ones; its unreadable images leave the table. Returns (None, scanned) when the splits differ."""
        if changed_splits(self.expected_splits.recorded, split_fingerprint(table)):
            log.info("Splits differ with the undecoded images presumed readable: decoding every image")
            return None, scanned
        rows = table[(table["split"] == self.scored_split) & ~table["decoded"]]
        log.info("Decoding the %d not yet decoded image(s) of split %s only", len(rows), self.scored_split)
        done = self.scan(rows.drop(columns=["sha1", "error", "dhash", "decoded"]), True)
        errors = dict(zip(done["path"], done["error"], strict=True))
        for frame in (table, scanned):
            hit = frame["path"].isin(errors.keys()) & (frame["error"] == "")
            frame.loc[hit, "error"] = frame.loc[hit, "path"].map(errors)
        return table[table["error"] == ""].reset_index(drop=True), scanned

    def uses_store(self, rows: pd.DataFrame, split: str | None) -> bool:
        """Whether ``rows`` are read from the prepared store: ``data.cache`` true or false decides; null (auto) takes
        it for a training run's train and val splits (read every epoch) and its test split (scored after every run on
        the same data: decoded once, then read by later runs and sweeps) when its images are larger than the working
        resolution (decoding them costs more than copying the prepared bytes), never for another single pass
        (``split`` None: an evaluation's own selection of images)."""
        if self.cfg["cache"] is not None:
            return bool(self.cfg["cache"])
        stored = split in ("train", "val", "test")
        return self.owns_data and stored and larger_than(rows["path"].tolist(), self.prepared_size)

    def make_dataset(
        self, rows: pd.DataFrame, train: bool, split: str | None = None, prepared: PreparedReader | None = None
    ) -> XrayDataset:
        """A Dataset over ``rows`` with the training or the evaluation pipeline (``split``: for the store's choice;
        ``prepared``: a prepared store that holds ``rows``, read without building one: a sample of a split)."""
        store = prepared is not None or self.uses_store(rows, split or ("train" if train else None))
        # a prepared image is already downsampled and resized: the pipeline resizes it to the input size only
        downsample = None if store else self.cfg["downsample_to"]
        on_device = train and bool(self.cfg["gpu_augment"])  # augmented and normalised in LitClassifier
        steps = self.augment if train and not on_device else None
        sized = store and self.prepared_size == self.image_size
        transform = build_transform(self.image_size, steps, self.cfg["resize"], downsample, sized=sized)
        normalize = None if on_device else Normalize(self.spec.mean, self.spec.std, self.spec.in_chans)
        pipeline = SeededPipeline(transform, normalize)
        if not store:
            reader = pixel_reader(verified=self.owns_data and bool(self.cfg["verify"]))  # decoded by the checks
            return XrayDataset(rows, self.labels, self.multilabel, pipeline, reader=reader, seed=self.seed)
        reader = prepared or build_store(
            rows["path"].tolist(),
            self.prepared_size,
            self.cfg["resize"],
            self.cfg["cache_dir"],
            workers=max(1, int(self.cfg["num_workers"])),
            downsample_to=self.cfg["downsample_to"],
        )
        return XrayDataset(rows, self.labels, self.multilabel, pipeline, reader=reader, seed=self.seed)

    def setup(self, stage: str | None = None) -> None:
        if self.table is not None:
            return
        self.table = self.load_table()
        for split in ("train", "val", "test"):
            rows = self.table[self.table["split"] == split]
            if len(rows):
                self.datasets[split] = self.make_dataset(rows, train=split == "train", split=split)
        if self.cfg["intensity_check"]:
            self.check_intensity()

    def check_intensity(self, n: int = 16) -> dict:
        """Warns when normalised inputs look wrong (`lungnet.data.transforms.check_intensity` on val, else train)."""
        normalize = Normalize(self.spec.mean, self.spec.std, self.spec.in_chans)
        return check_intensity(self.datasets.get("val") or self.datasets["train"], normalize, n)

    # ------------------------------------------------------------ class balance
    def class_weights(self) -> list[float] | None:
        """Inverse-frequency loss weights from the train split (None unless ``balance=loss``; multi-label:
        ``pos_weight`` = negatives / positives per label)."""
        if self.cfg["balance"] not in {"none", "loss", "sampler"}:
            raise DataError(f"data.balance must be none, loss or sampler, got {self.cfg['balance']!r}")
        if self.cfg["balance"] != "loss":
            return None
        ds = self.datasets["train"]
        counts = ds.class_counts().astype(np.float64)
        if self.multilabel:
            known = (~torch.isnan(ds.targets)).sum(0).numpy()
            return (np.maximum(known - counts, 1) / np.maximum(counts, 1)).tolist()
        weights = counts.sum() / (len(counts) * np.maximum(counts, 1))
        return weights.tolist()

    def train_sampler(self) -> EpochSampler:
        """Seeded per-epoch shuffling, or class-balanced weighted draws with ``balance=sampler``."""
        ds = self.datasets["train"]
        if "source" in ds.table and (self.cfg["source_balance"] != "none" or self.cfg["balance"] == "sampler"):
            weights = sample_weights(ds.table, str(self.cfg["source_balance"]), self.cfg["balance"] == "sampler")
            return EpochSampler(len(ds), self.seed, weights=weights.tolist())
        if self.cfg["balance"] != "sampler" or self.multilabel:
            return EpochSampler(len(ds), self.seed, shuffle=True)
        per_class = 1.0 / np.maximum(ds.class_counts(), 1)
        return EpochSampler(len(ds), self.seed, weights=per_class[ds.targets.numpy()].tolist())

    # ------------------------------------------------------------- loaders
    def loader(
        self, split: str, shuffle: bool = False, sampler: Sampler | None = None, as_bytes: bool = False
    ) -> DataLoader:
        """DataLoader over one split (``train``, ``val``, ``test``).

        Args:
            split: the split.
            shuffle: seeded per-epoch shuffling (an `EpochSampler`; ignored when ``sampler`` is given).
            sampler: a sampler of indices or ``(epoch, index)`` keys.
            as_bytes: uint8 images where the split can (`lungnet.data.dataset.as_bytes`): the consumer normalises.
        """
        if split not in self.datasets:
            raise DataError(
                f"Dataset '{self.source.name}' has no '{split}' split (available: {', '.join(self.datasets)})"
            )
        workers = int(self.cfg["num_workers"])
        gen = torch.Generator().manual_seed(self.seed)
        batch = int(self.cfg["batch_size"])
        dataset = datasets.as_bytes(self.datasets[split])[0] if as_bytes else self.datasets[split]
        # a training batch of one image breaks BatchNorm (and is noise): drop it
        drop_last = sampler is not None and len(dataset) % batch == 1
        if sampler is None and shuffle:
            sampler = EpochSampler(len(dataset), self.seed, shuffle=True)
        return DataLoader(
            dataset,
            batch_size=batch,
            sampler=sampler,
            num_workers=workers,
            pin_memory=bool(self.cfg["pin_memory"]),
            persistent_workers=bool(self.cfg["persistent_workers"]) and workers > 0,
            generator=gen,
            drop_last=drop_last,
            worker_init_fn=keep_large_buffers if workers > 0 else None,
        )

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Batches on the device go through the module's ``device_batch`` (``data.gpu_augment``: augmentation and
        normalisation of uint8 batches on the accelerator, `lungnet.train.module.LitClassifier.device_batch`)."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        return module.device_batch(batch) if hasattr(module, "device_batch") else batch

    def train_dataloader(self) -> DataLoader:
        sampler = self.train_sampler()
        trainer = self.trainer
        if trainer is not None:
            # Lightning creates the iterator (and workers prefetch) before it calls set_epoch: on resume
            # the first batches would come from epoch 0's order unless the epoch is set here already
            sampler.set_epoch(trainer.fit_loop.epoch_progress.current.processed)
        return self.loader("train", sampler=sampler)

    def val_dataloader(self) -> DataLoader | list:
        module = self.trainer.lightning_module if self.trainer is not None else None
        as_bytes = hasattr(module, "device_batch")  # it normalises uint8 batches on its device: workers copy bytes
        return self.loader("val", as_bytes=as_bytes) if "val" in self.datasets else []  # none: no validation

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")
