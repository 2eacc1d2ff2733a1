"""Values stored in a checkpoint are untrusted input: each is type- and range-checked before anything is built from
it, and a bad one is one line naming the file, the key and what it accepts (exit 2 on the command line)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lungnet.artifacts.checkpoint import CheckpointError, load_model, read_checkpoint
from lungnet.commands import predict as predict_cmd
from lungnet.models.weights import WeightsError, read_state_dict
from tests.conftest import run_cli
from tests.serve.test_inference import make_checkpoint

HUGE = 60000


def _set(key: str, value):
    """An edit of ``hyper_parameters.<dotted key>``."""

    def edit(ckpt: dict) -> None:
        *parents, last = key.split(".")
        node = ckpt["hyper_parameters"]
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    return edit


def _weight(value: float):
    """An edit that puts ``value`` into one weight of the state dict."""

    def edit(ckpt: dict) -> None:
        ckpt["state_dict"]["model.head.1.weight"][0, 0] = value

    return edit


BAD = [  # (edit, what the one-line refusal says)
    (_set("model.head_hidden", 10_000_000), "model.head_hidden=10000000 with 3 labels needs head tensor head.0.weight"),
    (_set("model.head_hidden", -1), "model.head_hidden=-1 must be a number >= 0"),
    (_set("model.head_hidden", "wide"), "model.head_hidden='wide' must be an integer >= 0"),
    (_set("model.in_chans", 2), "model.in_chans=2 must be one of: 1, 3"),
    (_set("model.image_size", HUGE), "model.image_size=60000 must be null or an integer in [8, 4096]"),  # older files
    (_set("model.drop_rate", 1.5), "model.drop_rate=1.5 must be in [0, 1)"),
    (_set("spec.input_size", HUGE), "spec.input_size=60000 must be an integer in [8, 4096]"),
    (_set("spec.input_size", 2.5), "spec.input_size=2.5 must be an integer in [8, 4096]"),
    (_set("spec.in_chans", 2), "spec.in_chans=2 must be 1 or 3"),
    (_set("spec.std", [0.0]), "spec.std=[0.0] must be 1 to 3 finite numbers"),
    (_set("spec.mean", [math.nan]), "spec.mean=[nan] must be 1 to 3 finite numbers"),
    (_set("spec.num_classes", 7), "spec.num_classes=7 must be 3 (one per label)"),
    (_set("spec.shell", "rm"), "hyper_parameters.spec="),
    (_set("data.image_size", HUGE), "data.image_size=60000 must be in [8, 4096]"),
    (_set("data.downsample_to", HUGE), "data.downsample_to=60000 must be in [8, 4096]"),
    (_set("data.resize", "stretch"), "data.resize='stretch' must be one of: squash, pad, crop"),
    (_set("data.cache_dir", "${oc.env:HOME}"), "data.cache_dir='${oc.env:HOME}' must be a string"),
    (_set("labels", ["A", "A", "B"]), "labels=['A', 'A', 'B'] must be a non-empty list of distinct class names"),
    (_set("multilabel", "no"), "multilabel='no' must be true or false"),
    (_set("extra.seed", "x"), "extra.seed='x' must be an integer"),
    (_set("data.split_seed", -1), "data.split_seed=-1 must be"),
    (_set("data.split_seed", "x"), "data.split_seed='x' must be"),
    (_set("extra.splits", ["val"]), "extra.splits=['val'] must be a mapping of train/val/test"),
    (_set("extra.splits", {"dev": {}}), "extra.splits={'dev': {}} must be a mapping of train/val/test"),
    (_set("extra.splits", {"val": {"n": 3, "digest": "../x"}}), "extra.splits.val={'n': 3, 'digest': '../x'} must"),
    (_set("extra.splits", {"val": {"n": -3, "digest": "a" * 40}}), "extra.splits.val={'n': -3,"),
    (_weight(math.nan), "state_dict tensor model.head.1.weight holds NaN or inf values"),
    (_weight(math.inf), "state_dict tensor model.head.1.weight holds NaN or inf values"),
]


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("good") / "best.ckpt")


def _tampered(good: Path, folder: Path, edit) -> Path:
    ckpt = torch.load(good, weights_only=True)
    edit(ckpt)
    path = folder / "tampered.ckpt"
    torch.save(ckpt, path)
    return path


IDS = [f"{i}-{says.split('=')[0].split(' ')[-1]}" for i, (_, says) in enumerate(BAD)]


@pytest.mark.parametrize(("edit", "says"), BAD, ids=IDS)
def test_every_stored_value_is_checked_before_use(good, tmp_path, edit, says):
    path = _tampered(good, tmp_path, edit)
    with pytest.raises(CheckpointError) as exc:
        load_model(path)
    message = str(exc.value)
    assert says in message and message.startswith(f"Checkpoint {path}") and "\n" not in message


def test_a_good_checkpoint_loads_with_its_values_typed(good):
    loaded = load_model(good)
    assert loaded.labels == ["Covid-19", "No_findings", "Pneumonia"] and loaded.spec.input_size == 32
    assert loaded.data["resize"] == "squash"


def test_a_huge_stored_head_is_refused_before_anything_is_allocated(good, tmp_path, monkeypatch):
    path = _tampered(good, tmp_path, _set("model.head_hidden", 10_000_000))
    built = []
    monkeypatch.setattr("lungnet.artifacts.checkpoint.create_model", lambda *a, **k: built.append(a))
    with pytest.raises(CheckpointError, match="head_hidden=10000000"):
        load_model(path)
    assert not built


def test_predict_refuses_a_tampered_checkpoint_in_one_line_exit_2(good, tmp_path, monkeypatch, capsys):
    path = _tampered(good, tmp_path, _set("data.downsample_to", HUGE))
    with pytest.raises(SystemExit) as exc:
        run_cli(
            predict_cmd.main, [f"ckpt={path}", f"input={tmp_path}", f"paths.log_dir={tmp_path / 'out'}"], monkeypatch
        )
    errors = [line for line in "".join(capsys.readouterr()).splitlines() if "[ERROR]" in line]
    assert exc.value.code == 2 and len(errors) == 1
    assert str(path) in errors[0] and "hyper_parameters.data.downsample_to=60000 must be in [8, 4096]" in errors[0]


def test_resume_reads_through_the_same_checks(good, tmp_path):
    path = _tampered(good, tmp_path, _weight(math.nan))
    with pytest.raises(CheckpointError, match="holds NaN or inf"):
        read_checkpoint(path)


def test_a_weights_file_with_non_finite_values_is_refused(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"conv.weight": torch.tensor([1.0, math.inf])}, path)
    with pytest.raises(WeightsError, match=r"w.pt: tensor conv.weight holds NaN or inf values"):
        read_state_dict(path)


def test_a_checkpoint_older_than_split_seed_was_split_by_its_seed(good, tmp_path):
    """Before data.split_seed existed the training seed split the data: it stands for the split seed."""
    old = load_model(_tampered(good, tmp_path, _set("extra.seed", 7)))
    assert "split_seed" not in torch.load(old.path, weights_only=True)["hyper_parameters"]["data"]
    assert old.split_seed == 7 and old.seed == 7
    path = _tampered(good, tmp_path, lambda c: (_set("extra.seed", 7)(c), _set("data.split_seed", 3)(c)))
    assert load_model(path).split_seed == 3 and load_model(path).seed == 7  # recorded: the seeds are apart
