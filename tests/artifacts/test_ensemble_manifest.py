"""An ensemble manifest is untrusted input: every bad value is one line naming the file, the key and what it
accepts (CheckpointError, exit 2), before any member is loaded."""

from __future__ import annotations

import copy
import json
import logging

import pytest

from lungnet.artifacts.ensemble import model_files, open_ensemble
from lungnet.artifacts.ensemble_manifest import FORMAT, read_manifest
from lungnet.commands import predict as predict_cmd
from lungnet.commands.wrapper import run_safely
from lungnet.errors import CheckpointError
from tests.artifacts.test_ensemble import pair  # noqa: F401 - the fixture
from tests.conftest import run_cli
from tests.serve.test_inference import LABELS

NAN = float("nan")


def _manifest(tmp_path) -> dict:
    return {
        "format": FORMAT,
        "labels": LABELS,
        "multilabel": False,
        "members": [
            {"name": f"m{k}", "checkpoint": str(tmp_path / f"m{k}.ckpt"), "sha256": "ab" * 32, "temperature": 1.5}
            for k in range(2)
        ],
    }


def _set(data: dict, member: int | None, key: str, value) -> dict:
    out = copy.deepcopy(data)
    (out if member is None else out["members"][member])[key] = value
    return out


# (member index or None for a top-level key, key, bad value, the key the message names)
BAD = [
    (None, "labels", None, "labels"),
    (None, "labels", ["A", "A"], "labels"),
    (None, "multilabel", "false", "multilabel"),
    (None, "members", [], "members"),
    (None, "members", "x", "members"),
    (None, "members", [1], "members[0]"),
    (1, "temperature", -1, "members[1].temperature"),
    (1, "temperature", 0, "members[1].temperature"),
    (1, "temperature", NAN, "members[1].temperature"),
    (1, "temperature", 1e308, "members[1].temperature"),
    (1, "temperature", "2", "members[1].temperature"),
    (0, "checkpoint", None, "members[0].checkpoint"),  # was a TypeError traceback
    (0, "checkpoint", 5, "members[0].checkpoint"),
    (0, "checkpoint", "relative/m0.ckpt", "members[0].checkpoint"),
    (0, "sha256", None, "members[0].sha256"),
    (0, "sha256", "abc", "members[0].sha256"),
    (0, "name", 5, "members[0].name"),
]


@pytest.mark.parametrize(("member", "key", "value", "named"), BAD, ids=[f"{m}.{k}={v!r}" for m, k, v, _ in BAD])
def test_every_bad_value_is_one_line_naming_the_file_and_key(tmp_path, member, key, value, named):
    path = tmp_path / "ensemble.json"
    path.write_text(json.dumps(_set(_manifest(tmp_path), member, key, value)))
    with pytest.raises(CheckpointError) as err:
        model_files(str(path))
    message = str(err.value)
    assert message.startswith(f"ensemble manifest {path} cannot be read: {named} is "), message
    assert "; accepted: " in message and "\n" not in message


def test_a_missing_key_is_named_too(tmp_path):
    data = _manifest(tmp_path)
    del data["members"][1]["sha256"]
    (tmp_path / "ensemble.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"members\[1\]\.sha256 is missing"):
        read_manifest(tmp_path / "ensemble.json")
    data["members"][1]["sha256"] = "cd" * 32
    del data["members"][1]["temperature"], data["members"][1]["name"]  # optional: uncalibrated, the run's name
    (tmp_path / "ensemble.json").write_text(json.dumps(data))
    pins = read_manifest(tmp_path / "ensemble.json")
    assert [(p.name, p.temperature) for p in pins] == [("m0", 1.5), (None, None)]


def test_a_written_manifest_reads_back_and_a_bad_temperature_exits_2(pair, tmp_path, caplog):  # noqa: F811
    manifest = open_ensemble([str(p) for p in pair]).write_manifest(tmp_path / "ensemble.json")
    assert [p.checkpoint for p in read_manifest(manifest)] == [p.resolve() for p in pair]
    data = json.loads(manifest.read_text())
    data["members"][0]["temperature"] = -1  # the members' hashes still match
    manifest.write_text(json.dumps(data))
    with caplog.at_level(logging.ERROR, logger="lungnet"), pytest.raises(SystemExit) as exit_:
        run_safely(open_ensemble, str(manifest))
    assert exit_.value.code == 2
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert line == (
        f"CheckpointError: ensemble manifest {manifest} cannot be read: members[0].temperature is -1; accepted: a "
        "number in (0, 100], or null"
    )


def test_predict_refuses_a_manifest_member_without_a_checkpoint(tmp_path, monkeypatch, capfd):
    path = tmp_path / "ensemble.json"
    path.write_text(json.dumps(_set(_manifest(tmp_path), 0, "checkpoint", None)))
    out = tmp_path / "outputs"
    with pytest.raises(SystemExit) as exit_:
        run_cli(predict_cmd.main, [f"ckpt={path}", f"input={tmp_path}", f"paths.log_dir={out}"], monkeypatch)
    assert exit_.value.code == 2
    captured = capfd.readouterr()
    (line,) = [x for x in (captured.out + captured.err).splitlines() if "ERROR" in x]
    assert "members[0].checkpoint is null" in line and "Traceback" not in captured.err
