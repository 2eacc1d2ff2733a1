"""What this machine's CPU can do, read once: the instruction-set flags that change numerics or speed.

Libraries change behaviour with them (OpenVINO runs bf16 by default where the CPU has AVX-512 BF16 or AMX),
so lungnet reads them itself, chooses precision explicitly and records the flags with every run.
"""

from __future__ import annotations

import functools
import logging
import platform
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # native bf16 matrix maths (AMD Zen 4+, Intel Cooper Lake / Sapphire Rapids+)
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx_vnni", "fma")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo`` on Linux; empty elsewhere, which means "assume none")."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")) and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """True when the CPU runs bf16 matrix maths natively (AVX-512 BF16 or AMX-BF16)."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in BF16_FLAGS)


def cpu_summary() -> dict:
    """Processor name and the flags that matter for lungnet's precision choices (for run records)."""
    flags = cpu_flags()
    return {
        "processor": platform.processor() or platform.machine(),
        "flags": sorted(f for f in REPORTED_FLAGS if f in flags),
        "native_bf16": cpu_has_native_bf16(flags),
    }


def resolve_device(device: str) -> str:
    """A torch device name: ``auto`` becomes ``cuda`` when a GPU is usable, else ``cpu``; others pass through."""
    if device != "auto":
        return device
    import torch  # here, not at the top: reading CPU flags must not import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class PrecisionChoice:
    """The training precision Lightning gets, what was asked for and why (recorded in environment.json)."""

    precision: str
    requested: str
    reason: str

    def record(self) -> dict:
        """For environment.json: the choice, the request, the reason and the CPU facts behind it."""
        facts = {"trainer.precision": self.precision, "requested": self.requested, "reason": self.reason}
        return {**facts, **cpu_summary()}


def choose_training_precision(
    requested: str, accelerator: str, image_size: int, bf16_min_image_size: int
) -> PrecisionChoice:
    """Resolves ``trainer.precision=auto``; any other value is kept as given (an explicit setting always wins).

    ``auto`` means bf16-mixed only where it was measured to pay (docs/benchmarks.md, "bf16 on the CPU"): on the CPU,
    with native bf16 instructions, from ``bf16_min_image_size`` px up. Elsewhere 32-true: emulated bf16 is slow, and
    at small inputs bf16-mixed measured no faster (EfficientNet-Lite0) or much slower (ResNet-18) than 32-true.

    Args:
        requested: ``trainer.precision`` as configured.
        accelerator: ``trainer.accelerator`` (``auto`` means the GPU when one is usable).
        image_size: the model's input size in pixels.
        bf16_min_image_size: the smallest input size that gets bf16-mixed.
    """
    requested = str(requested)
    if requested != "auto":
        return PrecisionChoice(requested, requested, "set explicitly (trainer.precision)")
    device = resolve_device("auto") if str(accelerator) == "auto" else str(accelerator)
    if device != "cpu":
        reason = f"auto decides for the CPU only; accelerator {accelerator}: set trainer.precision (e.g. trainer=gpu)"
        return PrecisionChoice("32-true", requested, reason)
    flags = cpu_flags()
    if not cpu_has_native_bf16(flags):
        return PrecisionChoice("32-true", requested, "this CPU has no native bf16 (avx512_bf16 / amx_bf16)")
    native = "/".join(f for f in BF16_FLAGS if f in flags)
    if image_size < bf16_min_image_size:
        reason = (
            f"native bf16 ({native}), but input {image_size} px < precision_auto.bf16_min_image_size="
            f"{bf16_min_image_size}: bf16-mixed measured no faster there"
        )
        return PrecisionChoice("32-true", requested, reason)
    reason = f"native bf16 ({native}) and input {image_size} px >= precision_auto.bf16_min_image_size"
    return PrecisionChoice("bf16-mixed", requested, reason)
