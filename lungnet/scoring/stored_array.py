"""Float arrays stored in JSON (an OOD gate's means and axes in a decision file): shape and little-endian float32
bytes in base64, about a quarter of the size of a list of numbers. Read back from an untrusted file, every array is
checked for its rank, shape and finite values (`read_array`).
"""

from __future__ import annotations

import base64

import numpy as np

from lungnet.untrusted import BadValue, Fields


def encode_array(array: np.ndarray) -> dict:
    """A float array as JSON-ready data: shape and little-endian float32 bytes in base64."""
    arr = np.ascontiguousarray(array, dtype="<f4")
    return {"shape": list(arr.shape), "dtype": "float32", "base64": base64.b64encode(arr.tobytes()).decode("ascii")}


def decode_array(data: dict) -> np.ndarray:
    """Inverse of `encode_array` (float64 result).

    Raises:
        ValueError: malformed entry (wrong size or type).
    """
    if data.get("dtype") != "float32":
        raise ValueError(f"unsupported array dtype {data.get('dtype')!r} (expected float32)")
    raw = np.frombuffer(base64.b64decode(data["base64"], validate=True), dtype="<f4")
    return raw.reshape([int(s) for s in data["shape"]]).astype(np.float64)


def read_array(fields: Fields, name: str, ndim: int) -> np.ndarray:
    """A stored array (`encode_array`) of ``ndim`` dimensions and finite values.

    Raises:
        BadValue: malformed, of another rank, or holding NaN or inf, named by its key.
    """
    entry = fields.nested(name)
    accepted = f"a {ndim}-d float32 array (shape, dtype, base64) of finite numbers"
    shape = entry.raw("shape")
    if not isinstance(shape, list) or len(shape) != ndim or not all(type(s) is int and s > 0 for s in shape):
        raise BadValue(entry.key("shape"), shape, f"a list of {ndim} positive integers")
    try:
        array = decode_array(entry.data)
    except (ValueError, TypeError, KeyError) as exc:
        raise BadValue(fields.key(name), None, accepted, said=f"malformed ({exc})") from exc
    if not np.isfinite(array).all():
        raise BadValue(fields.key(name), None, accepted, said="an array holding NaN or inf")
    return array
