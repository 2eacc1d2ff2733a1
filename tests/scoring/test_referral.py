"""lungnet.scoring.referral: an OOD reason names a gate part only when it is clearly past its threshold; the empty-set
note."""

from __future__ import annotations

import pytest

from lungnet.scoring.referral import CLEARLY_PAST, ambiguous_reason, empty_set_note, ood_reason

LAYOUT = "the image layout"
FEATURES = "the model's features"


@pytest.mark.parametrize(
    ("parts", "named"),
    [
        (None, []),  # a gate without parts (features only, or an ensemble's)
        ({"features": 1.02, "image": 1.01}, []),  # both just past: the same film in two encodings
        ({"features": 0.9, "image": CLEARLY_PAST - 0.01}, []),
        ({"features": 0.8, "image": CLEARLY_PAST}, [LAYOUT]),
        ({"features": 4.0, "image": 1.2}, [FEATURES]),
        ({"features": 2.0, "image": 3.0}, [FEATURES, LAYOUT]),
    ],
)
def test_an_ood_reason_names_only_the_parts_clearly_past_their_threshold(parts, named):
    top = max((parts or {"x": 1.3}).values())
    reason = ood_reason(top, 1.0, parts)
    assert reason.startswith(f"unlike the training images (OOD score {top:.3g} > threshold 1")
    assert [cause for cause in (FEATURES, LAYOUT) if cause in reason] == named
    assert reason.endswith("the model's output means nothing here")


def test_the_empty_set_note_and_the_ambiguous_reason_say_which_is_which():
    note = empty_set_note("90%", False)
    assert "empty 90% prediction set" in note and "more confident" in note and "not referred" in note
    assert "neither answer" in empty_set_note("90%", True)
    assert "more than one answer: refer to a person" in ambiguous_reason("90%", False)
    assert "both answers fit" in ambiguous_reason("90%", True)
