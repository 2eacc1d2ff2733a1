"""Whether several models hold the same split, told from what their checkpoints record, before any model runs.

A comparison (`lungnet.evaluation.compare`) and an ensemble (`lungnet.evaluation.ensemble`) score every model on the
same images of one split; models trained on different splits (another ``data.split_seed``, fraction or data set)
cannot be scored that way. Each checkpoint records its splits' fingerprints (``extra.splits``: per split an image
count and a digest of the images' content hashes, `lungnet.data.splits.split_fingerprint`), so the check needs no
image and no model run: two models hold the same split when its fingerprints are equal. A checkpoint made before
fingerprints were recorded is judged by its split settings (`SPLIT_KEYS`, its split seed included; a checkpoint made
before ``data.split_seed`` existed was split by its ``seed``, `lungnet.artifacts.checkpoint_checks.with_split_seed`).

A seed sweep (``python train.py -m seed=1,2``) keeps ``data.split_seed``: its runs hold the same splits.
"""

from __future__ import annotations

from dataclasses import dataclass

from lungnet.data.splits import SPLITS
from lungnet.errors import DataError

# the stored data settings that decide which images a split holds, named when two models' splits differ
SPLIT_KEYS = ("name", "source", "split_seed", "val_fraction", "test_fraction", "carve_val", "cv_folds", "cv_fold")
TEST_KEYS = ("name", "source", "split_seed", "test_fraction")  # the test split does not depend on val or the folds


@dataclass(frozen=True)
class SplitFacts:
    """What one model's checkpoint says about its splits.

    Attributes:
        name: the model's name in messages (its run directory's name).
        data: the stored data config (``hyper_parameters.data``, with its ``split_seed``).
        fingerprint: ``hyper_parameters.extra.splits`` (checked when the checkpoint was read); empty when unrecorded.
    """

    name: str
    data: dict
    fingerprint: dict

    @classmethod
    def of(cls, name: str, hparams: dict) -> SplitFacts:
        """The facts of a checkpoint's (checked) ``hyper_parameters``."""
        return cls(name, dict(hparams.get("data") or {}), dict((hparams.get("extra") or {}).get("splits") or {}))


def _settings(a: SplitFacts, b: SplitFacts, split: str) -> list[str]:
    """The split settings ``a`` and ``b`` differ in, e.g. ``['split_seed 1 vs 2']`` (those that move ``split``)."""
    keys = TEST_KEYS if split == "test" else SPLIT_KEYS
    return [f"{k} {a.data.get(k)} vs {b.data.get(k)}" for k in keys if a.data.get(k) != b.data.get(k)]


def split_difference(a: SplitFacts, b: SplitFacts, split: str) -> str | None:
    """Why ``a`` and ``b`` hold different ``split`` images (None: the same images, or nothing tells them apart).

    With both fingerprints, the split's digests decide, and the reason names the settings that differ (or the image
    counts, when only the images under the data roots changed); without, the split settings decide.
    """
    settings = _settings(a, b, split)
    if not (a.fingerprint and b.fingerprint):
        return "; ".join(settings) + " (no recorded split fingerprint)" if settings else None
    mine, theirs = a.fingerprint.get(split) or {}, b.fingerprint.get(split) or {}
    if mine.get("digest") == theirs.get("digest"):
        return None
    counts = f"{mine.get('n', 0)} vs {theirs.get('n', 0)} images"
    return "; ".join(settings) if settings else f"the same split settings, other images: {counts}"


def check_same_split(facts: list[SplitFacts], splits: list[str], what: str, remedy: str) -> None:
    """Refuses models that hold different images in any of ``splits`` (``all`` and unknown names are skipped).

    Args:
        facts: one per model, the first the reference.
        splits: the splits every model is scored (or fitted) on.
        what: how the message names the models (``runs``, ``ensemble members``).
        remedy: what to do, ending the message.

    Raises:
        DataError: one line naming the first two models and the split that differ, and why.
    """
    for split in (s for s in dict.fromkeys(splits) if s in SPLITS):
        for other in facts[1:]:
            why = split_difference(facts[0], other, split)
            if why:
                raise DataError(
                    f"{what} {facts[0].name} and {other.name} hold different {split} splits ({why}): {remedy}"
                )
