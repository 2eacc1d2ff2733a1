"""CPU feature detection: what decides bf16 and what run records report."""

from __future__ import annotations

import pytest

from lungnet import hardware


def test_native_bf16_needs_avx512_bf16_or_amx():
    assert hardware.cpu_has_native_bf16(frozenset({"avx2", "avx512f", "avx512_bf16"}))
    assert hardware.cpu_has_native_bf16(frozenset({"avx2", "amx_bf16"}))
    assert not hardware.cpu_has_native_bf16(frozenset({"avx2", "fma", "avx512f", "avx512_vnni"}))
    assert not hardware.cpu_has_native_bf16(frozenset())


def test_summary_reports_the_flags_of_this_machine():
    summary = hardware.cpu_summary()
    assert set(summary["flags"]) <= set(hardware.REPORTED_FLAGS)
    assert set(summary["flags"]) <= hardware.cpu_flags()
    assert summary["native_bf16"] == hardware.cpu_has_native_bf16()


AVX512_BF16 = frozenset({"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"})
AVX2_ONLY = frozenset({"avx2", "fma"})


@pytest.fixture
def cpu_with(monkeypatch):
    """Makes the CPU detection report the given flags."""

    def patch(flags: frozenset[str]) -> None:
        monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)

    return patch


def test_auto_chooses_bf16_on_a_native_bf16_cpu_at_large_inputs(cpu_with):
    cpu_with(AVX512_BF16)
    choice = hardware.choose_training_precision("auto", "cpu", 224, bf16_min_image_size=224)
    assert choice.precision == "bf16-mixed" and "avx512_bf16" in choice.reason
    record = choice.record()
    assert record["trainer.precision"] == "bf16-mixed" and record["requested"] == "auto" and record["native_bf16"]


def test_auto_keeps_fp32_without_the_flags_or_at_small_inputs(cpu_with):
    cpu_with(AVX2_ONLY)
    choice = hardware.choose_training_precision("auto", "cpu", 224, bf16_min_image_size=224)
    assert choice.precision == "32-true" and "no native bf16" in choice.reason
    assert choice.record()["native_bf16"] is False
    cpu_with(AVX512_BF16)
    small = hardware.choose_training_precision("auto", "cpu", 64, bf16_min_image_size=224)
    assert small.precision == "32-true" and "64 px < precision_auto.bf16_min_image_size=224" in small.reason


def test_auto_decides_for_the_cpu_only(cpu_with):
    cpu_with(AVX512_BF16)
    choice = hardware.choose_training_precision("auto", "gpu", 224, bf16_min_image_size=224)
    assert choice.precision == "32-true" and "CPU only" in choice.reason


@pytest.mark.parametrize("flags", [AVX512_BF16, AVX2_ONLY])
@pytest.mark.parametrize("explicit", ["32-true", "bf16-mixed"])
def test_an_explicit_precision_always_wins(cpu_with, flags, explicit):
    cpu_with(flags)
    choice = hardware.choose_training_precision(explicit, "cpu", 224, bf16_min_image_size=224)
    assert (choice.precision, choice.requested) == (explicit, explicit) and "explicitly" in choice.reason
