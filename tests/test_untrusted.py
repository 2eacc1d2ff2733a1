"""`lungnet.untrusted.Fields`: exact JSON types, finite numbers in range, and messages naming the key."""

from __future__ import annotations

import pytest

from lungnet.untrusted import BadValue, Fields

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("read", "value", "message"),
    [
        (lambda f: f.number("x", ge=0, le=1), True, "x is True; accepted: a number in [0, 1]"),  # a bool is no number
        (lambda f: f.number("x", ge=0, le=1), "0.5", "x is '0.5'; accepted: a number in [0, 1]"),
        (lambda f: f.number("x", gt=0), NAN, "x is nan; accepted: a number > 0"),
        (lambda f: f.number("x"), INF, "x is inf; accepted: a finite number"),
        (lambda f: f.number("x"), 10**400, "0...; accepted: a finite number"),  # too large for a float
        (lambda f: f.number("x", null=True, gt=0, lt=1), 1, "in (0, 1), or null"),
        (lambda f: f.boolean("x"), "false", "x is 'false'; accepted: true or false"),
        (lambda f: f.boolean("x"), 0, "x is 0; accepted: true or false"),
        (lambda f: f.string("x", choices=["a"]), "b", "x is 'b'; accepted: one of ['a']"),
        (lambda f: f.strings("x"), ["a", 1], "x is ['a', 1]; accepted: a non-empty list of strings"),
        (lambda f: f.nested("x"), [1, 2], "x is [1, 2]; accepted: a JSON object"),
        (lambda f: f.items("x"), {}, "x is {}; accepted: a non-empty list"),
        (lambda f: f.numbers("x", ge=0, le=1), [0.5, "a"], "x[1] is 'a'; accepted: a list of numbers in [0, 1]"),
        (lambda f: f.nested("x").number("y"), {"y": None}, "x.y is null; accepted: a finite number"),
    ],
)
def test_bad_values_name_the_key_and_what_it_accepts(read, value, message):
    with pytest.raises(BadValue) as err:
        read(Fields({"x": value}))
    assert message in str(err.value)


def test_good_values_absent_keys_and_non_objects():
    f = Fields({"n": 2, "t": None, "b": False, "s": ["a", "b"], "xs": [0, 0.5]})
    assert f.number("n", gt=0) == 2.0 and isinstance(f.number("n"), float)
    assert f.number("t", null=True) is None and f.number("gone", default=None) is None
    assert f.boolean("b") is False and f.strings("s") == ["a", "b"] and f.numbers("xs", ge=0, le=1).tolist() == [0, 0.5]
    with pytest.raises(BadValue, match="^gone is missing"):
        f.number("gone")
    with pytest.raises(BadValue, match=r"^members\[0\] is 3; accepted: a JSON object"):
        Fields(3, "members[0].")
