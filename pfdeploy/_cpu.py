"""What this machine's CPU is and which instructions it has (one reader of /proc/cpuinfo).

Speed and even INT8 accuracy depend on these: x86 CPUs without VNNI compute u8 x s8 dot products
through saturating 16-bit intermediates, and BF16 is only fast with AVX512-BF16 or AMX. Every
benchmark reports `cpu_summary()` beside its numbers.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
#: Instruction-set flags that decide CPU inference speed, as /proc/cpuinfo spells them.
NOTABLE_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.lru_cache(maxsize=1)
def _cpuinfo_fields() -> dict[str, str]:
    """The first processor's `key: value` lines of /proc/cpuinfo (empty off Linux)."""
    fields: dict[str, str] = {}
    try:
        text = CPUINFO.read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # end of the first processor's block
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_name() -> str:
    """The CPU model name (e.g. 'AMD EPYC 9R14'), or the platform's best guess."""
    return _cpuinfo_fields().get("model name") or platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    """The instruction-set flags the kernel reports for this CPU (empty when unknown)."""
    return frozenset(_cpuinfo_fields().get("flags", "").split())


def notable_flags() -> list[str]:
    """The NOTABLE_FLAGS this CPU has, in NOTABLE_FLAGS order."""
    flags = cpu_flags()
    return [flag for flag in NOTABLE_FLAGS if flag in flags]


def has_bf16() -> bool:
    """True when the CPU computes BF16 natively (AVX512-BF16 or AMX-BF16)."""
    return any(flag in cpu_flags() for flag in BF16_FLAGS)


def has_vnni() -> bool:
    """True when the CPU has an 8-bit dot-product instruction (AVX512-VNNI, AVX-VNNI or AMX-INT8)."""
    return any(flag in cpu_flags() for flag in VNNI_FLAGS)


def cpu_summary() -> str:
    """One line for reports: model name and the notable instruction sets ('AMD EPYC (avx2)')."""
    flags = notable_flags()
    return f"{cpu_name()} ({', '.join(flags) or 'no AVX2/AVX-512'})"
