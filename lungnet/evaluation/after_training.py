"""What training leaves beside its checkpoint once the last epoch is done, computed by ``evaluate.py``'s own code.

`finish_training` (called by `lungnet.train.finish.finish` on the selected checkpoint) runs these steps, each shown on
one progress bar (`PostTraining`; ``trainer.enable_progress_bar=false`` leaves the log lines alone):

1. ``scoring val``: the model's outputs on val with the OOD gate's inputs, computed once (or those of the selected
   epoch's validation pass, `lungnet.train.val_outputs`): training's val metrics, the temperature, the operating
   point, the conformal scores and the gate's threshold all use them;
2. ``scoring test``: training's test metrics (``test=false``: none, ``evaluate.py split=test`` scores them later);
3. ``OOD features``: the statistics the gate is fitted from (class means and scatter of its inputs,
   `lungnet.scoring.scatter`) of a seeded sample of at most ``ood.fit_max`` training images
   (`lungnet.evaluation.decisions.training_sample`), or those the ranks summed after a multi-process training;
4. ``calibration``: ``evaluate.py ckpt=<ckpt> split=val``'s scoring and report steps (`lungnet.evaluation.pipeline`):
   temperature, bootstrap intervals, operating point, conformal calibration, OOD gate, decisions;
5. ``writing reports``: ``predictions_<split>.csv``, ``model_card.md`` (also beside the checkpoint, where the app
   reads it) and ``<ckpt stem>.decision.json``: the decision file ``evaluate.py ckpt=<ckpt> split=val`` writes
   (with the validation summary the app shows), so ``predict.py`` and the app need no evaluation first.

Settings are the evaluation's defaults (`lungnet.schema.EvaluateConfig`) with training's ``ood.*`` and
``bootstrap.*``; no figures, report, explanations, audit or subgroups (``evaluate.py`` writes those).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from lungnet.artifacts.checkpoint import LoadedModel, load_model
from lungnet.artifacts.paths import decision_path
from lungnet.data.datamodule import LungDataModule
from lungnet.evaluation import decision_target
from lungnet.evaluation.by_source import known_metrics, per_source_metrics, source_column
from lungnet.evaluation.decisions import gate_sample, sample_scatters
from lungnet.evaluation.model_card import write_model_card
from lungnet.evaluation.pipeline import Evaluation, options, run_report_steps, score, write_beside_model
from lungnet.io import write_csv
from lungnet.schema import EvaluateConfig
from lungnet.scoring.gate_inputs import GateScatters
from lungnet.scoring.metrics import compute_metrics
from lungnet.scoring.outputs import Outputs, predictions_table

log = logging.getLogger(__name__)

STEPS = ("scoring val", "scoring test", "OOD features", "calibration", "writing reports")


class PostTraining:
    """A progress bar over the steps after training (tqdm, as the per-batch bars of each step below it) and a log
    line per step.

    Args:
        steps: the step names, in order.
        enabled: show the bar (the log lines are written either way).
    """

    def __init__(self, steps: Sequence[str], enabled: bool) -> None:
        self.steps = list(steps)
        self.bar = tqdm(total=len(self.steps), desc="After training", unit="step", disable=not enabled, leave=True)
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Shows ``name`` as the running step, then counts it done."""
        position = self.steps.index(name) + 1
        self.bar.set_description(f"After training [{position}/{len(self.steps)}]: {name}")
        log.info("After training, step %d of %d: %s", position, len(self.steps), name)
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        self.bar.update(1)

    def close(self) -> None:
        """Ends the bar and logs how long each step took."""
        self.bar.set_description("After training: done")
        self.bar.close()
        each = ", ".join(f"{name} {sec:.1f} s" for name, sec in self.seconds.items())
        log.info("After training: %.1f s (%s)", sum(self.seconds.values()), each)


def evaluation_config(cfg: DictConfig, ckpt: Path) -> DictConfig:
    """The config of ``evaluate.py ckpt=<ckpt> split=val``: the schema's defaults, training's ``ood.*`` and
    ``bootstrap.*``, and nothing drawn (no figures, explanations, audit or subgroups)."""
    settings = {
        "ckpt": str(ckpt),
        "split": "val",
        "ood": OmegaConf.to_container(cfg.ood, resolve=True),
        "bootstrap": OmegaConf.to_container(cfg.bootstrap, resolve=True),
        "report": {"figures": False, "html": False},
        "audit": {"enabled": False},
        "subgroups": {"enabled": False},
    }
    return OmegaConf.merge(OmegaConf.structured(EvaluateConfig), settings)


def split_metrics(out: Outputs, ev: Evaluation) -> dict:
    """Training's metrics of one split, and its ``predictions_<split>.csv`` (uncalibrated probabilities)."""
    labels, multilabel = ev.loaded.labels, ev.loaded.multilabel
    table = predictions_table(out.paths, out.probs, out.targets, labels, multilabel)
    sources = source_column(ev.dm.table, out.paths)  # data=multi: each image's data set
    if sources is not None:
        table.insert(1, "source", sources)
    write_csv(ev.run_dir / f"predictions_{out.name}.csv", table)
    if sources is None:
        return compute_metrics(out.probs, out.targets, labels, multilabel)
    metrics = known_metrics(out.probs, out.targets, labels)  # a finding no image of the split annotates: unscored
    metrics.update(per_source_metrics(out.probs, out.targets, labels, sources))  # per set, beside the pooled ones
    return metrics


def finish_splits(cfg: DictConfig, dm: LungDataModule) -> list[str]:
    """The splits `finish_training` scores, in order: ``val`` (with the OOD gate's inputs), ``test`` (with
    ``test=true``), ``train`` (the gate's training sample, `lungnet.evaluation.decisions.training_sample`; only with
    val, which thresholds the gate)."""
    has_val = "val" in dm.datasets
    splits = ["val"] if has_val else []
    if "test" in dm.datasets and bool(cfg.test):
        splits.append("test")
    if has_val and "train" in dm.datasets:
        splits.append("train")
    return splits


def finish_training(
    cfg: DictConfig,
    ckpt: Path,
    dm: LungDataModule,
    run_dir: Path,
    progress_bar: bool,
    scored: dict[str, Outputs | GateScatters] | None = None,
    loaded: LoadedModel | None = None,
) -> dict:
    """Scores the selected checkpoint on val and test and leaves it ready for ``predict.py`` and the app.

    Args:
        cfg: the train config (its ``ood.*``, ``bootstrap.*`` and ``test`` settings).
        ckpt: the selected checkpoint.
        dm: training's data module (its splits; the loaders use ``data.num_workers`` workers).
        run_dir: the run directory.
        progress_bar: show the steps' progress bar.
        scored: outputs already computed by split (``val``, ``test``; ``train``: the OOD gate's training sample, or
            its statistics), used instead of scoring again: the selected epoch's validation pass
            (`lungnet.train.val_outputs`), the ranks' gathered shards after a multi-process training
            (`lungnet.evaluation.sharded.score_shards`).
        loaded: ``ckpt`` already loaded (by the caller that scored ``scored`` with it), not read again.

    Returns:
        ``{"val": metrics, "test": metrics, "decision_file": path}`` for the splits the data has (no decision file
        without val).
    """
    ev_cfg = evaluation_config(cfg, ckpt)
    loaded = loaded if loaded is not None else load_model(ckpt)
    has_val = "val" in dm.datasets
    if has_val:  # a folder that cannot take the decision file fails here, before any scoring
        decision_target.check_target(ev_cfg, ckpt, loaded.labels, "val", "val")
        drop_stale(ckpt, loaded.labels)
    splits = finish_splits(cfg, dm)
    steps = [s for s in STEPS if s in ("scoring test", "writing reports") or has_val]
    steps = [s for s in steps if s != "scoring test" or "test" in splits]
    if "test" in dm.datasets and "test" not in splits:
        log.info("test=false: no test metrics now; later: python evaluate.py ckpt=%s split=test", ckpt)
    ev = Evaluation(ev_cfg, options(ev_cfg), Path(run_dir), loaded, dm, data=None, fit=None)  # type: ignore[arg-type]
    ev.scored = dict(scored or {})
    sample = ev.scored.pop("train", None)  # the OOD gate's training sample: its outputs, or the ranks' statistics
    progress = PostTraining(steps, progress_bar)
    scored: list[Outputs] = []
    try:
        if has_val:
            with progress.step("scoring val"):
                ev.data = ev.fit = ev.outputs("val", features=True)
                scored.append(ev.data)
        if "scoring test" in steps:
            with progress.step("scoring test"):
                scored.append(ev.outputs("test"))
        if has_val:
            calibrate(ev, progress, sample)
        with progress.step("writing reports"):
            results = {out.name: split_metrics(out, ev) for out in scored}
            if has_val:
                write_model_card(ev)
                write_beside_model(ev)
                results["decision_file"] = ev.result["decisions"].get("file")
    finally:
        progress.close()
    return results


def drop_stale(ckpt: Path, labels: list[str]) -> None:
    """Removes a decision file beside ``ckpt`` that belongs to an earlier checkpoint of this path (a resumed or
    restarted run overwrote it): it can no longer be used, and this run writes the new one."""
    path = decision_path(ckpt)
    if path.is_file() and decision_target.read_existing(path, ckpt, labels, warn=False) is None:
        log.info("Replacing %s: it was fitted for an earlier %s", path.name, ckpt.name)
        path.unlink()


def calibrate(ev: Evaluation, progress: PostTraining, sample: Outputs | GateScatters | None) -> None:
    """The OOD gate's statistics of its training sample (from ``sample``: its outputs or statistics, when given),
    then ``evaluate.py split=val``'s scoring and report steps on ``ev.data`` (temperature, intervals, operating point,
    conformal scores, OOD gate, decisions)."""
    with progress.step("OOD features"):
        ev.gate_fit = (
            sample_scatters(sample, ev.loaded.multilabel, ev.device) if isinstance(sample, Outputs) else sample
        )
        if "train" in ev.dm.datasets:
            gate_sample(ev)
    with progress.step("calibration"):
        ev.result = score(ev)
        run_report_steps(ev)
