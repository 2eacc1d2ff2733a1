"""Each command's checks that need only its config, run before anything heavy loads (torch, Lightning, timm) and
before the task writes a file: a typo costs a second, not a minute, and leaves no run directory behind.

`check_command` runs the checks of one command (`lungnet.commands.wrapper.hydra_app` calls it first in every job):

- values still ``???`` (``ckpt=<value> is required``);
- ranges of the command's schema (`lungnet.config_checks.check_ranges`) and, for ``train``, renamed keys;
- the split names a command reads (``split=valid`` is refused, naming the valid ones);
- files and folders the command line names: ``ckpt``, ``runs``, ``baseline``, ``input``, ``data.root`` (a
  generated data set, ``synthetic``, may be missing: training makes it) and explain's ``images``;
- ``train``: ``model.name`` (lungnet's names, timm's and torchvision's, read without importing them:
  `lungnet.models.names`), ``optimizer.lr``, ``trainer.max_epochs`` and ``optimized_metric``, whose value a
  finished run returns to a sweeper (`optimized_value`).

The deeper checks (a checkpoint's contents, the data set's files, the optimizer built once) stay where they were;
they still run, after these. Light on imports on purpose, like `lungnet.commands.launch`.
"""

from __future__ import annotations

import glob
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from lungnet.config_checks import check_ranges, renamed_keys
from lungnet.data.multi_names import MULTI, check_names
from lungnet.errors import ConfigError, DataError
from lungnet.models.names import unknown_model
from lungnet.schema import SCHEMAS

# the split names each command reads (its schema's ``split`` help says what they mean)
SPLITS = {
    "evaluate": ("test", "val", "train", "all"),
    "compare": ("test", "val", "train", "all"),
    "audit": ("val", "test", "train", "all"),
    "transfer": ("auto", "val", "test", "train"),
    "loso": ("auto", "val", "test"),
}
EXPLAIN_SPLITS = ("train", "val", "test")
OPTIMIZED_SPLITS = ("val", "test")  # metrics.json's blocks a sweeper can optimise
GENERATED_SOURCES = ("synthetic",)  # data sets training generates at data.root when it is missing


def check_command(command: str, cfg: DictConfig) -> None:
    """Runs the config-only checks of ``command`` (a config name: train, evaluate, ...) on its composed config.

    Raises:
        ConfigError: the first mistake, in one line naming the key, the value and what to do.
    """
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]}=<value> is required (--help lists the options)")
    if command == "train":
        old = renamed_keys(cfg)
        if old:
            raise ConfigError(old[0])
    if command in SCHEMAS:
        check_ranges(cfg, SCHEMAS[command])
    if command in SPLITS:
        check_choice(cfg, "split", SPLITS[command])
    for key in PATH_KEYS.get(command, ()):
        check_paths(cfg, key)
    check_data_root(cfg)
    extra = EXTRA_CHECKS.get(command)
    if extra is not None:
        extra(cfg)


def check_choice(cfg: DictConfig, key: str, choices: tuple[str, ...]) -> None:
    """Raises `ConfigError` when ``cfg.<key>`` is not one of ``choices``."""
    value = OmegaConf.select(cfg, key, default=None)
    if value is not None and str(value) not in choices:
        raise ConfigError(f"{key}={value} is not a split this command reads; choose one of: {', '.join(choices)}")


def _given(value: Any) -> list[str]:
    """The paths a value names: one string, or each item of a list (null and ``???``: none)."""
    if value is None:
        return []
    if isinstance(value, ListConfig | list | tuple):
        return [str(v) for v in value if v is not None]
    return [str(value)]


def check_paths(cfg: DictConfig, key: str) -> None:
    """Every file or folder ``cfg.<key>`` names exists (a glob pattern must match something).

    Raises:
        ConfigError: the first missing one, named with its key.
    """
    for given in _given(OmegaConf.select(cfg, key, default=None)):
        if glob.has_magic(given):
            if not glob.glob(str(Path(given).expanduser()), recursive=True):
                raise ConfigError(f"{key}={given} matches no file: check the pattern (quote it on the command line)")
            continue
        if not Path(given).expanduser().exists():
            what = PATH_HELP.get(key, "a file or folder")
            raise ConfigError(f"{key}={given}: not found ({key} takes {what})")


def check_data_root(cfg: DictConfig) -> None:
    """``data.root``, where set, is a folder (but for a data set that training generates).

    Raises:
        ConfigError: naming the data set, the folder and the two ways to point at it.
    """
    data = cfg.get("data")
    if not isinstance(data, DictConfig) or "root" not in data or OmegaConf.is_missing(data, "root"):
        return
    root = data.root
    if str(data.get("source", "")) == MULTI:  # several data sets: names checked here, roots when each is read
        try:
            check_names(data.get("sources"), data.get("roots"))
        except DataError as exc:
            raise ConfigError(str(exc)) from exc
        return
    if root is None or str(data.get("source", "")) in GENERATED_SOURCES:
        return
    if not Path(str(root)).expanduser().is_dir():
        name = f"'{data.name}'" if data.get("name") else "of the checkpoint"
        raise ConfigError(
            f"Data root for dataset {name} not found: {root}; pass data.root=/path/to/it (or set LUNGNET_DATA to "
            "the folder that holds it)"
        )


def check_train(cfg: DictConfig) -> None:
    """``train``'s config-only checks beyond the schema: the model name, the learning rate, the epochs and the
    metric a sweep optimises (`optimized_metric_key`).

    Raises:
        ConfigError: the first invalid value, with the valid ones.
    """
    name = OmegaConf.select(cfg, "model.name", default=None)
    why = unknown_model(str(name)) if name is not None else ""
    if why:
        raise ConfigError(f"model.name={name}: {why}")
    lr = OmegaConf.select(cfg, "optimizer.lr", default=None)
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, int | float) or not lr >= 0):
        raise ConfigError(f"optimizer.lr={lr!r} must be a number >= 0 (the learning rate)")
    epochs = OmegaConf.select(cfg, "trainer.max_epochs", default=None)
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ConfigError(f"trainer.max_epochs={epochs!r} must be an integer >= 1")
    if "optimized_metric" in cfg:
        optimized_metric_key(cfg.optimized_metric)


def optimized_metric_key(metric: Any) -> tuple[str, str]:
    """``val/auroc_macro`` -> ``("val", "auroc_macro")``: the block of metrics.json and the key in it.

    Raises:
        ConfigError: not ``<val|test>/<key>``.
    """
    split, _, key = str(metric).partition("/")
    if split not in OPTIMIZED_SPLITS or not key:
        raise ConfigError(
            f"optimized_metric={metric}: must be <split>/<metric> with split {' or '.join(OPTIMIZED_SPLITS)}, "
            "a key of that block of metrics.json (e.g. val/auroc_macro, val/f1_macro, val/loss)"
        )
    return split, key


def optimized_value(results: dict | None, metric: str) -> float | None:
    """The value of the metric ``optimized_metric`` names, which train.py returns to a sweeper (as
    lightning-hydra-template's ``get_metric_value``): ``val/f1_macro`` -> ``results["val"]["f1_macro"]``.

    Returns None when the run wrote no metrics (``fast_dev_run``, a secondary DDP rank).

    Raises:
        ConfigError: the run's metrics hold no such number, naming ``optimized_metric`` and the ones they hold.
    """
    if not results:
        return None
    split, key = optimized_metric_key(metric)
    value = (results.get(split) or {}).get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        held = [f"{s}/{k}" for s in OPTIMIZED_SPLITS for k, v in (results.get(s) or {}).items() if _number(v)]
        raise ConfigError(
            f"optimized_metric={metric}: this run's metrics.json holds no such number; choose one of: {', '.join(held)}"
        )
    return float(value)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_explain(cfg: DictConfig) -> None:
    """``images``: a split of the checkpoint, or a folder or CSV that exists."""
    images = OmegaConf.select(cfg, "images", default=None)
    if images is not None and str(images) not in EXPLAIN_SPLITS and not Path(str(images)).expanduser().exists():
        raise ConfigError(
            f"images={images}: not found; images takes {', '.join(EXPLAIN_SPLITS)}, a folder or a .csv with a path "
            "column"
        )


# the keys each command reads as paths, and what they take
PATH_KEYS = {
    "evaluate": ("ckpt",),
    "predict": ("ckpt", "input"),
    "audit": ("ckpt",),
    "app": ("ckpt",),
    "export": ("ckpt",),
    "explain": ("ckpt",),
    "compare": ("runs",),
    "transfer": ("runs",),
    "loso": ("runs",),
    "crossval": ("runs", "baseline"),
}
PATH_HELP = {
    "ckpt": "a checkpoint (best.ckpt), an export (.onnx, .pt), a multirun folder or an ensemble.json",
    "runs": "a run folder, a multirun folder, a checkpoint, or a list of them",
    "baseline": "another k-fold multirun folder",
    "input": "an image or DICOM file, a folder, or a glob ('scans/**/*.dcm')",
}
EXTRA_CHECKS: dict[str, Callable[[DictConfig], None]] = {"train": check_train, "explain": check_explain}
