"""lungnet.scoring.stored_array: float arrays in JSON round-trip at float32 precision; malformed ones are named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lungnet.scoring.stored_array import decode_array, encode_array, read_array
from lungnet.untrusted import BadValue, Fields


def test_arrays_round_trip_as_json():
    a = np.random.default_rng(2).normal(size=(3, 4))
    back = decode_array(json.loads(json.dumps(encode_array(a))))
    np.testing.assert_allclose(back, a, rtol=1e-6)
    with pytest.raises(ValueError, match="dtype"):
        decode_array({"dtype": "object", "shape": [1], "base64": ""})


def test_a_stored_array_of_another_rank_or_with_nan_is_refused_by_its_key():
    good = {"m": encode_array(np.ones((2, 3)))}
    assert read_array(Fields(good, "ood."), "m", 2).shape == (2, 3)
    with pytest.raises(BadValue, match=r"ood\.m\.shape"):
        read_array(Fields(good, "ood."), "m", 1)
    with pytest.raises(BadValue, match=r"ood\.m"):
        read_array(Fields({"m": encode_array(np.array([[1.0, np.nan]]))}, "ood."), "m", 2)
