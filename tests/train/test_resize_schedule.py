"""Progressive resizing: the scheduled sizes, what reaches the model in training and validation, the refusals."""

from __future__ import annotations

import pandas as pd
import pytest
import pytorch_lightning as pl

from lungnet.errors import ConfigError
from lungnet.train.resize_schedule import ProgressiveResize, scheduled_size
from lungnet.train.training import train
from tests.conftest import TINY as BASE_TINY
from tests.conftest import compose_cfg

TINY = [*BASE_TINY, "log_figures_every=100", "data.image_size=96"]


def _train(tmp_path, *overrides):
    cfg = compose_cfg(
        "train",
        [f"data.root={tmp_path / 'syn'}", "data.options.n_per_class=10", "data.options.size=48", *TINY, *overrides],
    )
    return train(cfg, tmp_path / "run")


def test_sizes_rise_linearly_in_steps_of_32_to_the_full_size():
    assert [scheduled_size(e, 224, 128, 4) for e in range(6)] == [128, 128, 160, 192, 224, 224]
    assert [scheduled_size(e, 224, 16, 2) for e in range(3)] == [32, 96, 224]  # never below one step
    assert scheduled_size(0, 224, 256, 3) == 224  # a start above the batch: the batch as it is


class SeenSizes(pl.Callback):
    """Test-only: (epoch, training?, input side) of every batch that reaches the model."""

    instances: list[SeenSizes] = []

    def __init__(self) -> None:
        self.seen: set[tuple[int, bool, int]] = set()
        SeenSizes.instances.append(self)

    def on_fit_start(self, trainer, pl_module) -> None:
        def record(module, args) -> None:
            self.seen.add((trainer.current_epoch, module.training, int(args[0].shape[-1])))

        pl_module.model.register_forward_pre_hook(record)


def test_training_batches_grow_while_validation_stays_at_the_full_size(tmp_path):
    SeenSizes.instances.clear()
    spy = "+callbacks.spy._target_=tests.train.test_resize_schedule.SeenSizes"
    _train(tmp_path, "trainer.max_epochs=3", "progressive_resize.start_size=32", "progressive_resize.epochs=2", spy)
    seen = SeenSizes.instances[-1].seen
    assert {(e, s) for e, training, s in seen if training} == {(0, 32), (1, 64), (2, 96)}
    assert {s for _, training, s in seen if not training} == {96}
    logged = pd.read_csv(tmp_path / "run" / "csv" / "metrics.csv").dropna(subset=["train/image_size"])
    assert logged["train/image_size"].tolist() == [32.0, 64.0, 96.0]


def test_off_by_default(tmp_path):
    SeenSizes.instances.clear()
    _train(tmp_path, "+callbacks.spy._target_=tests.train.test_resize_schedule.SeenSizes")
    assert {s for _, _, s in SeenSizes.instances[-1].seen} == {96}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["progressive_resize.epochs=2"], "fewer than 1 of trainer.max_epochs=1"),
        (["trainer.max_epochs=2", "progressive_resize.epochs=2"], "fewer than 1 of trainer.max_epochs=2"),
        (["trainer.max_epochs=4", "progressive_resize.epochs=2", "swa.epochs=3"], "every epoch swa.epochs averages"),
        (["trainer.max_epochs=3", "progressive_resize.epochs=2", "progressive_resize.start_size=96"], "not below"),
        # no data.image_size: the model's own input size is the full size
        (
            [
                "trainer.max_epochs=3",
                "progressive_resize.epochs=2",
                "progressive_resize.start_size=4096",
                "data.image_size=null",
            ],
            "4096 is not below",
        ),
    ],
)
def test_schedules_that_cannot_work_are_refused_before_the_run_folder(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        _train(tmp_path, *overrides)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("start", "epochs", "message"), [(128, 0, "epochs must be >= 1"), (4, 2, ">= 8 px")])
def test_direct_use_with_impossible_settings_is_refused(start, epochs, message):
    with pytest.raises(ValueError, match=message):
        ProgressiveResize(start, epochs)
