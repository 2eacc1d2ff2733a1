import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lungnet.data.datamodule import LungDataModule
from lungnet.data.sources import DataError
from lungnet.data.transforms import Normalize
from lungnet.io import printable
from lungnet.models.specs import ModelSpec
from tests.conftest import shared, write_png
from tests.data.test_bad_inputs import bad_files

SPEC = ModelSpec(name="t", arch="t", input_size=32, in_chans=1, mean=(0.5,), std=(0.25,))


def _cfg(source, root, **kw):
    return {"source": source, "root": str(root), "batch_size": 4, **kw}


def test_batches_splits_and_reports(tiny_folder, tmp_path):
    run = tmp_path / "run"
    dm = LungDataModule(_cfg("pneumonia", tiny_folder, carve_val=False), SPEC, seed=0, run_dir=run)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 32, 32) and batch["target"].dtype == torch.long
    assert set(batch) == {"image", "target", "path", "index"}
    for name in ("train", "val", "test"):
        assert (run / "splits" / f"{name}.csv").exists()
    report = json.loads((run / "data_report.json").read_text())
    assert report["sizes"] == {"train": 12, "val": 12, "test": 12}
    assert (run / "bad_files.csv").exists()


def test_duplicate_into_test_is_refused(tiny_folder, tmp_path):
    src = tiny_folder / "train" / "NORMAL" / "img_000.png"
    (tiny_folder / "test" / "NORMAL" / "copy.png").write_bytes(src.read_bytes())
    with pytest.raises(DataError, match="leaks"):
        LungDataModule(_cfg("pneumonia", tiny_folder), SPEC).setup()
    dm = LungDataModule(_cfg("pneumonia", tiny_folder, allow_leakage=True), SPEC)
    dm.setup()
    assert dm.report["duplicate_images"]["train/test"] == 1


def test_bad_file_skipped_or_error(tiny_folder, tmp_path):
    (tiny_folder / "train" / "NORMAL" / "broken.png").write_bytes(b"not a png")
    dm = LungDataModule(_cfg("pneumonia", tiny_folder), SPEC, run_dir=tmp_path / "r")
    dm.setup()
    assert len(dm.datasets["train"]) == 12
    assert "broken.png" in (tmp_path / "r" / "bad_files.csv").read_text()
    with pytest.raises(DataError, match="broken.png"):
        LungDataModule(_cfg("pneumonia", tiny_folder, on_bad_file="error"), SPEC).setup()


def test_every_bad_file_is_a_row_for_training_and_for_split_all(tiny_folder, tmp_path):
    """The tables train.py and evaluate.py split=all read: every kind of bad file (a DICOM whose Rows is text, a PNG
    whose stream ends early among them) is a bad_files.csv row with its reason, never a traceback."""
    expected = bad_files(tiny_folder / "train" / "PNEUMONIA")
    for all_images in (False, True):
        run = tmp_path / f"all_{all_images}"
        LungDataModule(_cfg("pneumonia", tiny_folder), SPEC, run_dir=run).load_table(all_images=all_images)
        listed = pd.read_csv(run / "bad_files.csv").set_index("path")["error"].rename(lambda p: Path(p).name)
        assert sorted(listed.index) == sorted(printable(n) for n in expected)
        for name, reason in expected.items():
            assert reason in listed[printable(name)], name


def test_blank_nih_label_cells_are_bad_rows(tiny_nih, tmp_path):
    """A blank Finding Labels or Patient ID cell: the row is reported in bad_files.csv and skipped, or stops."""
    csv = tiny_nih / "Data_Entry_2017.csv"
    rows = [line.split(",") for line in csv.read_text().splitlines()]
    rows[2][1] = ""  # line 3: 00000001_001.png, Effusion
    rows[4][3] = " "  # line 5: 00000002_000.png, Pneumonia
    csv.write_text("\n".join(",".join(r) for r in rows) + "\n")
    blank = {
        "00000001_001.png": "blank 'Finding Labels' in Data_Entry_2017.csv line 3",
        "00000002_000.png": "blank 'Patient ID' in Data_Entry_2017.csv line 5",
    }
    findings = {"options": {"findings": ["No Finding", "Effusion", "Pneumonia", "Infiltration"]}}  # those present
    for source in ("nih14", "nih6"):
        run = tmp_path / source
        cfg = _cfg(source, tiny_nih, val_fraction=0.2, intensity_check=False, **findings)
        dm = LungDataModule(cfg, SPEC, run_dir=run)
        dm.setup()
        bad = pd.read_csv(run / "bad_files.csv")
        assert {Path(p).name: e for p, e in zip(bad["path"], bad["error"], strict=True)} == blank
        assert not set(dm.table["path"].map(lambda p: Path(p).name)) & set(blank)
        with pytest.raises(DataError, match="blank 'Finding Labels' in Data_Entry_2017.csv line 3"):
            LungDataModule(_cfg(source, tiny_nih, on_bad_file="error", **findings), SPEC).setup()


def test_unknown_or_contradictory_nih_findings_are_bad_rows(tiny_nih, tmp_path):
    """A misspelt finding (the image would count as negative for every finding) or "No Finding" beside a finding:
    the row is reported in bad_files.csv and skipped, for both NIH sources."""
    csv = tiny_nih / "Data_Entry_2017.csv"
    rows = [line.split(",") for line in csv.read_text().splitlines()]
    rows[2][1] = "Efusion"  # line 3: 00000001_001.png, Effusion
    rows[6][1] = "No Finding|Effusion"  # line 7: 00000002_002.png
    csv.write_text("\n".join(",".join(r) for r in rows) + "\n")
    findings = {"options": {"findings": ["No Finding", "Effusion", "Pneumonia", "Infiltration"]}}
    for source in ("nih14", "nih6"):
        run = tmp_path / source
        cfg = _cfg(source, tiny_nih, val_fraction=0.2, intensity_check=False, **findings)
        dm = LungDataModule(cfg, SPEC, run_dir=run)
        dm.setup()
        bad = pd.read_csv(run / "bad_files.csv").set_index("path")["error"].rename(lambda p: Path(p).name)
        assert bad["00000001_001.png"].startswith("unknown finding 'Efusion' in Data_Entry_2017.csv line 3 (valid:")
        assert (
            bad["00000002_002.png"]
            == "'No Finding' beside a finding (No Finding|Effusion) in Data_Entry_2017.csv line 7"
        )
        assert not {"00000001_001.png", "00000002_002.png"} & set(dm.table["path"].map(lambda p: Path(p).name))


def test_a_byte_copy_in_another_class_folder_stops_or_both_are_bad_files(tiny_folder, tmp_path):
    """``cp NORMAL/x.png PNEUMONIA/dup.png`` trained under both labels before (only data_report.json counted it)."""
    first = tiny_folder / "train" / "NORMAL" / "img_000.png"
    copy = tiny_folder / "train" / "PNEUMONIA" / "dup.png"
    copy.write_bytes(first.read_bytes())
    with pytest.raises(DataError) as info:
        LungDataModule(_cfg("pneumonia", tiny_folder, on_bad_file="error"), SPEC).load_table()
    message = str(info.value)
    assert f"{first}: label 'NORMAL' contradicts label 'PNEUMONIA' of the same image (identical bytes) at {copy}" in (
        message
    )
    assert f"{copy}: label 'PNEUMONIA' contradicts label 'NORMAL'" in message
    run = tmp_path / "run"
    table = LungDataModule(_cfg("pneumonia", tiny_folder), SPEC, run_dir=run).load_table()
    assert set(pd.read_csv(run / "bad_files.csv")["path"]) == {str(first), str(copy)}
    used = pd.concat(pd.read_csv(run / "splits" / f"{s}.csv") for s in ("train", "val", "test"))
    assert not {str(first), str(copy)} & set(used["path"]) and len(table) == len(used) == 35


def test_nih_rows_contradicting_or_repeating_one_image(tiny_nih, tmp_path):
    """Two rows for one Image Index (No Finding, then Pneumonia) contradict: both are bad rows naming their CSV
    lines; an exact duplicate row counts once. Both NIH sources, one rule."""
    csv = tiny_nih / "Data_Entry_2017.csv"
    lines = csv.read_text().splitlines()
    assert lines[1].startswith("00000001_000.png,No Finding,")
    lines += [lines[1].replace("No Finding", "Pneumonia"), lines[2]]  # lines 32 and 33 of the file
    csv.write_text("\n".join(lines) + "\n")
    findings = {"options": {"findings": ["No Finding", "Effusion", "Pneumonia", "Infiltration"]}}
    for source in ("nih14", "nih6"):
        with pytest.raises(DataError, match="line 2\\) contradicts label 'Pneumonia' .* line 32\\)"):
            LungDataModule(_cfg(source, tiny_nih, on_bad_file="error", **findings), SPEC).load_table()
        run = tmp_path / source
        cfg = _cfg(source, tiny_nih, val_fraction=0.2, **findings)
        table = LungDataModule(cfg, SPEC, run_dir=run).load_table()
        bad = pd.read_csv(run / "bad_files.csv")
        assert bad["path"].map(lambda p: Path(p).name).tolist() == ["00000001_000.png"] * 2
        assert (
            bad["error"]
            .str.startswith(
                ("label 'No Finding' (Data_Entry_2017.csv line 2)", "label 'Pneumonia' (Data_Entry_2017.csv line 32)")
            )
            .all()
        )
        names = table["path"].map(lambda p: Path(p).name)
        assert "00000001_000.png" not in set(names) and (names == "00000001_001.png").sum() == 1


def test_class_weights_and_sampler(tmp_path):
    root = tmp_path / "imb"
    for i in range(24):
        write_png(root / ("PNEUMONIA" if i < 18 else "NORMAL") / f"{i}.png", i)
    dm = LungDataModule(_cfg("pneumonia", root, balance="loss", val_fraction=0.25), SPEC, seed=0)
    dm.setup()
    w = dm.class_weights()
    assert w[0] > 1 > w[1]
    dm2 = LungDataModule(_cfg("pneumonia", root, balance="sampler", val_fraction=0.25), SPEC, seed=0)
    dm2.setup()
    seen = torch.cat([b["target"] for _ in range(20) for b in dm2.train_dataloader()])
    assert 0.35 < seen.float().mean() < 0.65  # roughly balanced despite 3:1 imbalance


def test_intensity_warning(tiny_folder, caplog):
    bad_spec = ModelSpec(name="t", arch="t", input_size=32, in_chans=1, mean=(0.5,), std=(0.001,))
    with caplog.at_level(logging.WARNING):
        LungDataModule(_cfg("pneumonia", tiny_folder), bad_spec).setup()
    assert "out of range" in caplog.text


def test_real_nih6_and_nih14_patient_split():
    root = shared("nih")
    five = ["No Finding", "Atelectasis", "Effusion", "Infiltration", "Pneumonia"]
    with pytest.raises(DataError, match="'Edema' has 1 usable image"):  # the sample holds one Edema-only image
        LungDataModule(_cfg("nih6", root, verify=False, intensity_check=False), SPEC, seed=3).setup()
    for source in ("nih6", "nih14"):
        cfg = _cfg(source, root, val_fraction=0.15, test_fraction=0.15, verify=False, intensity_check=False)
        dm = LungDataModule({**cfg, "options": {"findings": five}} if source == "nih6" else cfg, SPEC, seed=3)
        dm.setup()
        assert dm.report["shared_patients"] == {"train/val": 0, "train/test": 0, "val/test": 0}
        sizes = dm.report["sizes"]
        assert sizes["train"] > sizes["val"] > 0 and sizes["test"] > 0
        batch = next(iter(dm.val_dataloader()))
        if source == "nih14":
            assert batch["target"].shape == (4, 14) and batch["target"].dtype == torch.float32
        else:
            assert dm.labels == five


def test_real_darkcovidnet_split_is_stratified():
    dm = LungDataModule(_cfg("darkcovidnet", shared("darkcovidnet"), val_fraction=0.2, verify=False), SPEC, seed=0)
    dm.setup()
    val = dm.table[dm.table["split"] == "val"]
    assert abs(len(val) - 185) <= 5
    share = (val["label"] == "Covid-19").mean()
    assert abs(share - 99 / 925) < 0.02
    assert np.isfinite(dm.check_intensity()["mean"])


def _smooth(seed: int, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = sum(np.sin(2 * np.pi * (rng.random() * 3 * x + rng.random() * 3 * y + rng.random())) for _ in range(4))
    return ((img - img.min()) / np.ptp(img) * 255).astype(np.uint8)


def test_near_duplicate_into_test_is_refused(tiny_folder, tmp_path):
    from PIL import Image

    Image.fromarray(_smooth(1)).save(tiny_folder / "train" / "NORMAL" / "smooth.png")
    Image.fromarray(_smooth(2)).save(tiny_folder / "train" / "NORMAL" / "other.png")
    resized = Image.fromarray(_smooth(1)).resize((96, 96), Image.Resampling.BILINEAR)
    resized.save(tiny_folder / "test" / "NORMAL" / "copy.jpg", quality=80)  # not byte-identical: no exact dupe
    dm = LungDataModule(_cfg("pneumonia", tiny_folder), SPEC)
    dm.setup()  # exact hashes see nothing
    assert dm.report["duplicate_images"]["train/test"] == 0 and "near_duplicate_images" not in dm.report
    with pytest.raises(DataError, match="near duplicate images train/test: 1"):
        LungDataModule(_cfg("pneumonia", tiny_folder, near_duplicates=True), SPEC, run_dir=tmp_path / "r").setup()
    report = json.loads((tmp_path / "r" / "data_report.json").read_text())  # written for the refused run too
    assert report["near_duplicate_examples"][0]["test"].endswith("copy.jpg")
    assert report["near_duplicate_examples"][0]["train"].endswith("smooth.png")
    dm = LungDataModule(_cfg("pneumonia", tiny_folder, near_duplicates=True, allow_leakage=True), SPEC)
    dm.setup()
    assert dm.report["near_duplicate_images"] == {"train/val": 0, "train/test": 1, "val/test": 0}
    strict = LungDataModule(
        _cfg("pneumonia", tiny_folder, near_duplicates=True, near_duplicate_threshold=0, allow_leakage=True), SPEC
    )
    strict.setup()
    assert strict.report["near_duplicate_images"]["train/test"] == 0  # the threshold is honoured


def test_epoch_sampler_is_a_function_of_seed_and_epoch(tiny_folder):
    rotate = [{"_target_": "albumentations.Affine", "rotate": [-30, 30], "p": 1.0}]
    dm = LungDataModule(_cfg("pneumonia", tiny_folder, balance="sampler"), SPEC, seed=3, augment=rotate)
    dm.setup()
    first, again = dm.train_sampler(), dm.train_sampler()
    first.set_epoch(4)
    again.set_epoch(4)
    assert list(first) == list(again) and all(key[0] == 4 for key in first)
    again.set_epoch(5)
    assert list(first) != list(again)
    ds = dm.datasets["train"]
    assert torch.equal(ds[(4, 2)]["image"], ds[(4, 2)]["image"])  # the key alone decides the augmentation
    assert not torch.equal(ds[(4, 2)]["image"], ds[(5, 2)]["image"])


def test_downsample_to_gives_the_same_batches_with_and_without_the_cache(tiny_folder, tmp_path):
    images = {}
    for cache in (False, True):
        cfg = _cfg("pneumonia", tiny_folder, carve_val=False, downsample_to=16, cache=cache, cache_dir=str(tmp_path))
        dm = LungDataModule(cfg, SPEC, seed=0, run_dir=tmp_path / f"run{cache}", owns_data=True)
        dm.setup()
        images[cache] = next(iter(dm.val_dataloader()))["image"]
    # the cache stores the downsampled image; the pipeline must not downsample it a second time
    torch.testing.assert_close(images[True], images[False], atol=0.6 / 255 / 0.25, rtol=0)


def test_a_reader_never_writes_where_its_data_config_names(tmp_path):
    """A data config read from a checkpoint (owns_data=False, the default) neither generates a synthetic set at
    its data.root nor puts the image cache in its data.cache_dir: only training writes at the paths it names."""
    root, named_cache = tmp_path / "anywhere", tmp_path / "cache"
    cfg = _cfg("synthetic", root, cache=True, cache_dir=str(named_cache), options={"n_per_class": 2, "size": 16})
    reader = LungDataModule(cfg, SPEC)
    assert Path(reader.cfg["cache_dir"]) != named_cache
    with pytest.raises(DataError, match="generates synthetic data only when training"):
        reader.setup("test")
    assert not root.exists() and not named_cache.exists()
    trainer = LungDataModule({**cfg, "cache": False}, SPEC, owns_data=True)
    assert trainer.cfg["cache_dir"] == str(named_cache)
    assert len(trainer.source.scan()) == 8 and (root / "manifest.json").is_file()


XRAY = [
    {"_target_": "albumentations.Affine", "scale": [0.9, 1.1], "rotate": [-10, 10], "border_mode": 0, "p": 0.8},
    {"_target_": "albumentations.RandomBrightnessContrast", "brightness_limit": 0.15, "contrast_limit": 0.15},
    {"_target_": "albumentations.GaussNoise", "std_range": [0.01, 0.03], "p": 0.5},
]


def test_prepared_store_and_direct_path_give_the_same_training_items(tiny_folder, tmp_path):
    """Same shape, dtype, normalisation and augmentation whether the images come from the files or the store."""
    items = {}
    for cache in (False, True):
        cfg = _cfg("pneumonia", tiny_folder, carve_val=False, cache=cache, cache_dir=str(tmp_path / "store"))
        dm = LungDataModule(cfg, SPEC, seed=0, augment=XRAY, run_dir=tmp_path / f"run{cache}", owns_data=True)
        dm.setup()
        assert dm.uses_store(dm.datasets["train"].table, "train") is cache
        items[cache] = torch.stack([dm.datasets["train"][(3, i)]["image"] for i in range(4)])
    assert list((tmp_path / "store").glob("*.npy"))
    assert items[True].dtype == items[False].dtype == torch.float32 and items[True].shape == (4, 1, 32, 32)
    torch.testing.assert_close(items[True], items[False], atol=1.01 / 255 / 0.25, rtol=0)
    assert -2.5 < float(items[True].mean()) < 2.5  # (x / 255 - 0.5) / 0.25, as the float path normalised


def test_the_ood_sample_of_a_stored_training_split_is_read_from_its_store(tiny_folder, tmp_path):
    """The OOD gate's training sample (`training_sample`) reads the training split's prepared store: no second store
    is built, no file decoded again, and its items equal those of an evaluation data set over the same rows."""
    from lungnet.evaluation.decisions import training_sample

    cfg = _cfg("pneumonia", tiny_folder, carve_val=False, cache=True, cache_dir=str(tmp_path / "store"))
    dm = LungDataModule(cfg, SPEC, seed=0, augment=XRAY, run_dir=tmp_path / "run", owns_data=True)
    dm.setup()
    stores = sorted((tmp_path / "store").glob("*.npy"))
    key, total = training_sample(dm, 3, seed=0)
    sample = dm.datasets[key]
    assert len(sample) == 3 < total and sample.reader is dm.datasets["train"].reader
    assert sorted((tmp_path / "store").glob("*.npy")) == stores
    built = dm.make_dataset(sample.table, train=False, split="train")  # a store of its own for these rows
    for i in range(3):
        torch.testing.assert_close(sample[i]["image"], built[i]["image"], atol=0, rtol=0)


def test_the_store_is_the_default_only_where_it_pays(tiny_folder, tmp_path):
    """data.cache=null: the store for a training run's train/val/test when the images are larger than the working
    size."""
    cfg = _cfg("pneumonia", tiny_folder, carve_val=False, cache_dir=str(tmp_path / "s"))
    rows = pd.DataFrame({"path": [str(next((tiny_folder / "train" / "NORMAL").glob("*.png")))]})
    training = LungDataModule(cfg, SPEC, owns_data=True)
    assert training.cfg["cache"] is None and training.prepared_size == 32
    assert not training.uses_store(rows, "train")  # 32 px files at 32 px: nothing to gain
    small = LungDataModule({**cfg, "prepared_size": 16}, SPEC, owns_data=True)
    assert small.uses_store(rows, "train") and small.uses_store(rows, "val") and small.uses_store(rows, "test")
    assert not small.uses_store(rows, None)  # an evaluation's own selection: one pass
    assert not LungDataModule({**cfg, "prepared_size": 16}, SPEC).uses_store(rows, "train")  # a one-pass reader
    assert not LungDataModule({**cfg, "prepared_size": 16, "cache": False}, SPEC, owns_data=True).uses_store(
        rows, "train"
    )


def test_gpu_augment_trains_on_uint8_batches_augmented_in_the_module(tiny_folder, tmp_path):
    """data.gpu_augment=true: the loader hands over uint8 bytes, LitClassifier augments and normalises them."""
    import pytorch_lightning as pl

    from lungnet.train.module import LitClassifier

    cfg = _cfg("pneumonia", tiny_folder, carve_val=False, cache=True, gpu_augment=True, cache_dir=str(tmp_path))
    dm = LungDataModule({**cfg, "num_workers": 0}, SPEC, seed=0, augment=XRAY, owns_data=True)
    dm.setup()
    assert dm.datasets["train"][(0, 0)]["image"].dtype == torch.uint8
    assert dm.datasets["val"][0]["image"].dtype == torch.float32  # evaluation batches are normalised as before
    module = LitClassifier(
        {"name": "simple_cnn", "in_chans": 1, "image_size": 32},
        dm.labels,
        optimizer={"_target_": "torch.optim.SGD", "lr": 0.01},
        data=dm.cfg,
        extra={"seed": 0, "augment": {"train": XRAY}},
    )
    seen, step = [], module.training_step

    def training_step(batch, batch_idx):
        seen.append(batch["image"])
        return step(batch, batch_idx)

    module.training_step = training_step
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        accelerator="cpu",
    )
    trainer.fit(module, datamodule=dm)
    assert seen and all(x.dtype == torch.float32 and x.shape[1:] == (1, 32, 32) for x in seen)
    raw = torch.stack([dm.datasets["train"][(0, i)]["image"] for i in range(4)])
    module.train()
    augmented = module.device_batch({"image": raw})["image"]
    assert not torch.allclose(augmented, module.normalize.batch(raw))  # augmented on the batch
    module.eval()
    torch.testing.assert_close(module.device_batch({"image": raw})["image"], module.normalize.batch(raw))


def test_a_module_that_normalises_batches_gets_the_stores_bytes_for_validation(tiny_folder, tmp_path):
    """Training's validation loader: uint8 from the prepared store when the module normalises each batch on its
    device (LitClassifier.device_batch), the same numbers once normalised; normalised images otherwise."""
    from types import SimpleNamespace

    cfg = _cfg("pneumonia", tiny_folder, carve_val=False, cache=True, cache_dir=str(tmp_path))
    dm = LungDataModule(cfg, SPEC, seed=0, run_dir=tmp_path / "run", owns_data=True)
    dm.setup("fit")
    floats = next(iter(dm.val_dataloader()))["image"]  # no trainer: nothing normalises batches
    normalise = Normalize(SPEC.mean, SPEC.std, SPEC.in_chans)
    module = SimpleNamespace(device_batch=lambda batch: {**batch, "image": normalise.batch(batch["image"])})
    dm.trainer = SimpleNamespace(lightning_module=module)
    raw = next(iter(dm.val_dataloader()))["image"]
    assert floats.dtype == torch.float32 and raw.dtype == torch.uint8
    assert torch.equal(dm.on_after_batch_transfer({"image": raw}, 0)["image"], floats)
    assert dm.datasets["val"][0]["image"].dtype == torch.float32  # the split's own data set is unchanged
