"""The one /proc/cpuinfo reader: names and flags parsed from the first processor block."""

from __future__ import annotations

import pytest

from pfdeploy import _cpu

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16

processor\t: 1
model name\t: some other name
flags\t\t: fpu
"""


@pytest.fixture
def fake_cpuinfo(tmp_path, monkeypatch):
    def use(text):
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        monkeypatch.setattr(_cpu, "CPUINFO", path)
        _cpu._cpuinfo_fields.cache_clear()

    yield use
    _cpu._cpuinfo_fields.cache_clear()


def test_reads_the_first_processor(fake_cpuinfo):
    fake_cpuinfo(CPUINFO)
    assert _cpu.cpu_name() == "AMD EPYC 9R14 96-Core Processor"
    assert _cpu.notable_flags() == ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"]
    assert _cpu.has_bf16() and _cpu.has_vnni()
    assert _cpu.cpu_summary() == "AMD EPYC 9R14 96-Core Processor (avx2, avx512f, avx512_vnni, avx512_bf16)"


def test_avx2_only_cpu_has_neither_bf16_nor_vnni(fake_cpuinfo):
    fake_cpuinfo("model name\t: AMD EPYC\nflags\t\t: sse avx avx2 fma\n")
    assert not _cpu.has_bf16() and not _cpu.has_vnni()
    assert _cpu.cpu_summary() == "AMD EPYC (avx2)"


def test_missing_cpuinfo_falls_back(fake_cpuinfo, tmp_path, monkeypatch):
    monkeypatch.setattr(_cpu, "CPUINFO", tmp_path / "absent")
    _cpu._cpuinfo_fields.cache_clear()
    assert _cpu.cpu_flags() == frozenset()
    assert _cpu.cpu_name()  # platform's guess, never empty


@pytest.mark.parametrize("name, bf16, vnni", [("avx2", False, False), ("avx512-vnni", False, True),
                                              ("avx512-bf16", True, True), ("amx", True, True)])
def test_the_faked_feature_sets_are_the_four_cpu_kinds(cpu_features, name, bf16, vnni):
    """tests/cpu_facts.py's four CPUs, as pfdeploy sees them (what PFDEPLOY_TEST_CPU=<name> runs the suite on)."""
    cpu_features(name)
    assert (_cpu.has_bf16(), _cpu.has_vnni()) == (bf16, vnni)
    assert _cpu.cpu_summary().endswith(")") and f"[faked: {name}]" in _cpu.cpu_name()
    assert ("amx_bf16" in _cpu.notable_flags()) == (name == "amx")
