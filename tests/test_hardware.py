"""CPU feature detection: what decides bf16 and what run records report."""

from __future__ import annotations

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
