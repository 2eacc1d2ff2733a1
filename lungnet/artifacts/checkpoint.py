"""Self-describing checkpoints: read safely (``weights_only=True``) and rebuild the model from them alone."""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from lungnet.artifacts.checkpoint_checks import check_checkpoint
from lungnet.data.preprocessing import logits_to_probs
from lungnet.errors import CheckpointError  # noqa: F401 - re-exported: lungnet.artifacts.checkpoint.CheckpointError
from lungnet.models.registry import Classifier, create_model
from lungnet.models.specs import ModelSpec

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, with everything the checkpoint says about itself."""

    model: Classifier
    spec: ModelSpec
    labels: list[str]
    multilabel: bool
    data: dict
    hparams: dict
    path: Path

    @property
    def seed(self) -> int:
        """The training run's seed: weights, data order and augmentation (0 when unrecorded)."""
        return int(self.hparams.get("extra", {}).get("seed", 0))

    @property
    def split_seed(self) -> int:
        """The seed of the run's splits (``data.split_seed``; a checkpoint made before it existed: its ``seed``,
        `lungnet.artifacts.checkpoint_checks.with_split_seed`): with its data config it recomputes the run's splits."""
        return int(self.data.get("split_seed", self.seed))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Sigmoid for multi-label, softmax otherwise (`lungnet.data.preprocessing.logits_to_probs`)."""
        return logits_to_probs(logits, self.multilabel)


TORCHSCRIPT_SUFFIXES = (".pt", ".ts")  # the only names a TorchScript file is ever loaded from (with trust_export)


def is_torchscript(path: str | os.PathLike) -> bool:
    """True for a TorchScript archive (a zip with a ``code/`` folder), not a state-dict checkpoint."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any("/code/" in name for name in zf.namelist())


def check_checkpoint_format(path: Path) -> None:
    """Refuses, from the file's first bytes, what is not a PyTorch checkpoint at all, and TorchScript.

    ``torch.save`` writes a zip archive (legacy: a pickle stream, first byte 0x80). Anything else (text, an
    image, an empty file) is not a checkpoint; a TorchScript archive is code and never goes to a checkpoint
    loader, whatever its name.

    Raises:
        CheckpointError: the file is not a checkpoint, is truncated, or is TorchScript.
    """
    with open(path, "rb") as fh:
        head = fh.read(8)
    if zipfile.is_zipfile(path):
        if is_torchscript(path):
            raise CheckpointError(
                f"Refusing to load {path}: it is a TorchScript archive (code that runs when loaded and called), not "
                f"a checkpoint; lungnet runs TorchScript only from a {' or '.join(TORCHSCRIPT_SUFFIXES)} file and only "
                "with trust_export=true (do that only for a file you made or trust)"
            )
        return
    if head.startswith(b"PK"):
        raise CheckpointError(f"Checkpoint {path} is corrupt or truncated (an incomplete zip archive)")
    if not head.startswith(b"\x80"):
        what = "an empty file" if not head else f"its content starts with {head!r}"
        raise CheckpointError(
            f"{path} is not a checkpoint ({what}; torch.save writes a zip archive): give the best.ckpt or last.ckpt "
            "that train.py wrote"
        )


def _unpickler_reason(exc: Exception) -> str:
    """The one line of torch's multi-line weights_only refusal that names what was refused."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    line = next((ln for ln in lines if "WeightsUnpickler error" in ln), lines[0] if lines else repr(exc))
    return line.split(". Please")[0].replace("WeightsUnpickler error: ", "")


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Loads a checkpoint dict with ``weights_only=True``, every stored value checked
    (`lungnet.artifacts.checkpoint_checks.check_checkpoint`).

    Raises:
        CheckpointError: missing file, not a checkpoint (text, TorchScript, truncated), pickled objects inside
            (refused), not a lungnet checkpoint, a stored value of the wrong type or out of range, a head that
            does not match its tensors, or non-finite weights.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"Checkpoint not found: {path}")
    check_checkpoint_format(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"Refusing to load {path}: it holds pickled Python objects, which could run code "
            f"(only plain tensors and types are accepted; weights_only=True). Details: {_unpickler_reason(exc)}"
        ) from exc
    except (RuntimeError, EOFError, OSError, KeyError, ValueError) as exc:
        raise CheckpointError(f"Checkpoint {path} is corrupt or truncated: {' '.join(str(exc).split())}") from exc
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or "state_dict" not in ckpt or not {"spec", "labels", "model"} <= set(hp):
        raise CheckpointError(
            f"{path} is not a lungnet checkpoint (no state_dict / hyper_parameters with spec, labels, model)"
        )
    return check_checkpoint(ckpt, path)


BUILD_OPTIONS = ("in_chans", "drop_rate", "head_hidden", "cam_layer", "image_size")  # stored model keys a rebuild uses


def load_model(path: str | os.PathLike) -> LoadedModel:
    """Rebuilds the trained model from a checkpoint alone (no config, no weights download)."""
    ckpt = read_checkpoint(path)
    hp = ckpt["hyper_parameters"]
    spec = ModelSpec.from_dict(hp["spec"])
    # what the architecture is built with; never pretrained / weights / cache_dir: nothing is downloaded or read
    opts = {k: v for k, v in hp["model"].items() if k in BUILD_OPTIONS}
    model = create_model(hp["model"]["name"], num_classes=len(hp["labels"]), **opts)
    state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    own = model.state_dict()
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if wrong:
        raise CheckpointError(
            f"Checkpoint {path} does not fit model {hp['model']['name']} with {len(hp['labels'])} classes "
            f"({', '.join(hp['labels'])}): tensor shapes differ, e.g. {'; '.join(wrong[:3])} "
            "(checkpoint vs model; a head trained for another number of classes?)"
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"Checkpoint {path} does not fit model {hp['model']['name']}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.spec = spec
    model.eval()
    return LoadedModel(
        model=model,
        spec=spec,
        labels=list(hp["labels"]),
        multilabel=bool(hp["multilabel"]),
        data=dict(hp.get("data") or {}),
        hparams=dict(hp),
        path=Path(path),
    )


# ------------------------------------------------------------------------------------- finding a run's checkpoint
def selected_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a run reported: ``last.ckpt`` when it was trained with ``checkpoint.select=last``."""
    metrics = run_dir / "metrics.json"
    try:
        selected = json.loads(metrics.read_text(encoding="utf-8")).get("selected") if metrics.is_file() else None
    except (OSError, ValueError):
        selected = None
    last = run_dir / "checkpoints" / "last.ckpt"
    return last if selected == "last" and last.is_file() else run_dir / "checkpoints" / "best.ckpt"


def _natural(path: Path) -> list:
    """Sort key: ``multirun/2`` before ``multirun/10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


_NAMED: set[tuple[Path, ...]] = set()  # unfinished runs already named in a warning


def training_runs(root: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """The training run directories at or below ``root``, finished and unfinished, each in natural order.

    ``root`` itself when it is a run directory (it holds ``checkpoints/*.ckpt``), else each run directory below it
    (a multirun, a sweep, a cross-validation). A run directory holds ``checkpoints/*.ckpt`` or ``metrics.json``; it
    is finished when it holds ``metrics.json``, which training writes last. An unfinished run (killed, failed, or
    still training: a sweep trial killed after its first ``best.ckpt``) is not a model anyone reported on: every
    reader of a directory of runs (ensembles, compare, crossval) skips it, and this names them in one warning.

    Returns:
        (finished, unfinished) run directories; both empty when ``root`` holds no run.
    """
    root = Path(root).expanduser()
    if any((root / "checkpoints").glob("*.ckpt")):
        runs = [root]
    else:
        marked = {p.parent.parent for p in root.rglob("checkpoints/*.ckpt")}
        runs = sorted(marked | {p.parent for p in root.rglob("metrics.json")}, key=_natural)
    unfinished = [run for run in runs if not (run / "metrics.json").is_file()]
    if unfinished and tuple(unfinished) not in _NAMED:  # once per process: a command reads the directory twice
        _NAMED.add(tuple(unfinished))
        log.warning(
            "Skipping %d unfinished training run(s) under %s (no metrics.json: killed, failed or still running): %s",
            len(unfinished),
            root,
            ", ".join(str(run) for run in unfinished),
        )
    return [run for run in runs if run not in unfinished], unfinished


def checkpoints_below(root: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """The checkpoint every finished training run at or below ``root`` reported (`selected_checkpoint`;
    `training_runs` says which runs count), and the unfinished runs it skipped.

    Returns:
        (checkpoints, unfinished run directories); no checkpoints when ``root`` holds no finished run.
    """
    finished, unfinished = training_runs(root)
    runs = [run for run in finished if (run / "checkpoints" / "best.ckpt").is_file()]
    return [selected_checkpoint(run) for run in runs], unfinished


def no_run_message(root: str | os.PathLike, unfinished: list[Path]) -> str:
    """Why ``root`` gives no model: no training run, or only unfinished ones (then its checkpoint file, named
    directly, is the way to use one anyway)."""
    if not unfinished:
        return f"{root}: a directory without any training run (no checkpoints/best.ckpt)"
    return (
        f"{root}: a directory without any finished training run ({len(unfinished)} unfinished, no metrics.json: "
        f"{', '.join(str(r) for r in unfinished[:3])}{', ...' if len(unfinished) > 3 else ''}); to use one anyway, "
        "name its checkpoint file"
    )


def model_names(ckpts: list[Path]) -> list[str]:
    """A short unique name per checkpoint: its run directory's name (``<run>/checkpoints/x.ckpt``) or file stem."""
    names = []
    for ckpt in ckpts:
        base = ckpt.parent.parent.name if ckpt.parent.name == "checkpoints" else ckpt.stem
        if ckpt.parent.name == "checkpoints" and ckpt.stem != "best":
            base += f"_{ckpt.stem}"
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names
