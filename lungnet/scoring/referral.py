"""Why a decision is referred to a person, and the note a decision carries when its prediction set is empty: the
words `lungnet.artifacts.decision` writes into the ``decision_reason`` and ``decision_note`` columns, which
predict.py, the
app, heatmap captions and the evaluation report show.

**OOD reasons.** `lungnet.scoring.ood.ImageGate` flags an image when either of its parts (the model's pooled features,
the
layout of its input thumbnail) scores past that part's own threshold. A part is named as the cause only when its
score is at least ``CLEARLY_PAST`` times its threshold; a part just past its threshold, where two encodings of the
same film can land on either side, names no cause: the reason then says only "unlike the training images".

**Empty prediction sets.** Split conformal sets at level 1 - alpha may hold no label at all. That happens only when
the model is right, with room to spare, on more than 1 - alpha of the calibration images: the set's probability
bar is then so high that a less confident (often still correct) image clears it with no label. Such an image is
not ambiguous between answers, so it is decided by the operating point (as without sets) and carries a note
saying so; the coverage still counts it as a miss. ``abstain.below`` refers images below a chosen confidence.
"""

from __future__ import annotations

CLEARLY_PAST = 1.5  # an OOD gate part is named as the cause when its score is at least this multiple of its threshold
PART_CAUSES = {"features": "the model's features", "image": "the image layout, e.g. a turned or lateral film"}

OOD = "ood"  # referral kinds, as counted in the report's ``referred_by``
AMBIGUOUS = "set"
CONFIDENCE = "confidence"


def ood_reason(score: float, threshold: float, parts: dict[str, float] | None = None) -> str:
    """The reason an OOD-flagged image is referred.

    Args:
        score: the gate's score of the image.
        threshold: the gate's threshold.
        parts: ``{part: score / its threshold}`` of an `lungnet.scoring.ood.ImageGate`, or None.

    Returns:
        "unlike the training images (...)", naming the parts at least ``CLEARLY_PAST`` times past their threshold.
    """
    causes = [PART_CAUSES[part] for part, ratio in (parts or {}).items() if ratio >= CLEARLY_PAST]
    cause = f"; clearly in {' and in '.join(causes)}" if causes else ""
    return (
        f"unlike the training images (OOD score {score:.3g} > threshold {threshold:.3g}{cause}): the model's output "
        "means nothing here"
    )


def ambiguous_reason(level: str, multilabel: bool) -> str:
    """The reason an image whose prediction set holds more than one answer is referred (``level``: e.g. ``90%``)."""
    if multilabel:
        return f"a finding is undecided at {level} confidence (both answers fit): refer to a person"
    return f"the {level} prediction set holds more than one answer: refer to a person"


def confidence_reason(confidence: float, below: float) -> str:
    """The reason an image below ``abstain.below`` is referred."""
    return f"confidence {confidence:.3f} below abstain.below={below:g}: refer to a person"


def empty_set_note(level: str, multilabel: bool) -> str:
    """The note on a decision whose prediction set is empty (see the module doc)."""
    what = "a finding's set holds neither answer" if multilabel else "no label is in the set"
    return (
        f"empty {level} prediction set ({what}): the model is more confident on the validation images than the "
        f"{level} level needs, so the set's bar for a label is above this image's probabilities; decided by the "
        "operating point, "
        "not referred (abstain.below refers low-confidence images)"
    )
