"""The building blocks of the schemas: string choices (`Choice`) and fields with help text and limits (`opt`)."""

from __future__ import annotations

import enum
from dataclasses import field
from typing import Any

from omegaconf import MISSING

# the largest image side (px) any config or stored file may ask for: a model input, data.downsample_to. Real
# radiographs are about 3000 px; a larger value is a typo or a tampered file, and would allocate gigabytes per image
MAX_IMAGE_SIZE = 4096

# data.near_duplicates: off, refuse near copies of test images, or group near copies into one split: true/false (the
# command line's and old configs') or a word, so the field is typed Any and `check_ranges` compares with type
# (OmegaConf 2.3 cannot compose a Union[bool, str] field inside the data group)
NEAR_DUPLICATES = (False, True, "group")


class Choice(str, enum.Enum):
    """A string option with a fixed set of values: compares equal to, and prints as, its value."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def values(cls) -> list[str]:
        return [m.value for m in cls]


class Resize(Choice):
    squash = "squash"
    pad = "pad"
    crop = "crop"


class Balance(Choice):
    none = "none"
    loss = "loss"
    sampler = "sampler"


class SourceBalance(Choice):
    none = "none"
    equal = "equal"
    sqrt = "sqrt"


class OnBadFile(Choice):
    skip = "skip"
    error = "error"


class Mode(Choice):
    min = "min"
    max = "max"


class Select(Choice):
    best = "best"
    last = "last"


class Device(Choice):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Runtime(Choice):
    onnxruntime = "onnxruntime"
    openvino = "openvino"


class AuditSource(Choice):
    auto = "auto"
    folder = "folder"
    size = "size"
    none = "none"


class Overlap(Choice):
    drop = "drop"
    refuse = "refuse"
    allow = "allow"


class Precision(Choice):
    fp32 = "fp32"
    bf16 = "bf16"


def opt(default: Any = MISSING, help: str = "", factory: Any = None, **limits: Any) -> Any:  # noqa: A002
    """A dataclass field with its help text and limits (``ge``, ``gt``, ``lt``, ``le``) in the metadata."""
    meta = {"help": help, **limits}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


class LogLevel(Choice):
    """uvicorn's log levels."""

    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"
    trace = "trace"


class ExportFormat(Choice):
    onnx = "onnx"
    torchscript = "torchscript"


class Int8Weights(Choice):
    """The int8 weight encodings of `lungnet.serve.export.quantize_onnx` (its ``INT8_WEIGHTS``)."""

    reduced = "reduced"
    full = "full"
    uint8 = "uint8"
