"""What this machine's CPU can do, read once: the instruction-set flags that change numerics or speed.

Libraries change behaviour with them (OpenVINO runs bf16 by default where the CPU has AVX-512 BF16 or AMX),
so lungnet reads them itself, chooses precision explicitly and records the flags with every run.
"""

from __future__ import annotations

import functools
import logging
import platform
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
