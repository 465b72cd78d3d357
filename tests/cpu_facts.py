"""CPU facts for tests: the four x86 feature sets pfdeploy distinguishes, faked through `pfdeploy._cpu`.

What pfdeploy does on a CPU (BF16 rows in deploy, OpenVINO precision hints, BF16 refusals, the VNNI rule of
`backend="auto"`) depends only on `pfdeploy._cpu`, which reads /proc/cpuinfo. A test that depends on the CPU
fakes that file with `use_cpu(monkeypatch, name)`, so each behaviour is tested on every machine:
- where the real CPU has the feature, the test runs for real;
- where it lacks it, `pfdeploy._cpu` is told it has it, and where the real hardware would be needed to
  compute (OpenVINO BF16 on a CPU without AVX512-BF16/AMX) `openvino_backend.compiled_for_cpu` is wrapped
  by `bf16_stand_in`: the same OpenVINO compile, with the f32 hint where bf16 was asked, as if OpenVINO had
  honoured bf16. It proves pfdeploy's logic (planning, labels, verification rows, reports), not BF16
  numerics: tests of BF16 accuracy need the real CPU (`REAL_BF16`) and say so.

`PFDEPLOY_TEST_CPU=<name> make test` fakes one feature set for the whole run (tests/conftest.py), which is
how the suite is checked against all four on one machine.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pfdeploy import _cpu

AVX2 = ("sse4_2", "avx", "avx2", "fma", "f16c")
AVX512 = ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd")
#: The four CPU kinds pfdeploy behaves differently on, as /proc/cpuinfo flags.
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "avx2": AVX2,  # e.g. AMD EPYC Zen 2/3: no VNNI, no BF16
    "avx512-vnni": (*AVX2, *AVX512, "avx512_vnni"),  # e.g. Intel Cascade Lake
    "avx512-bf16": (*AVX2, *AVX512, "avx512_vnni", "avx512_bf16"),  # e.g. AMD EPYC Zen 4, Intel Cooper Lake
    "amx": (*AVX2, *AVX512, "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"),  # Sapphire Rapids
}
ENV = "PFDEPLOY_TEST_CPU"

_cpu._cpuinfo_fields.cache_clear()
#: The real machine's flags and name, read before any test fakes them.
REAL_FLAGS = _cpu.cpu_flags()
REAL_NAME = _cpu.cpu_name()
REAL_BF16 = _cpu.has_bf16()
REAL_VNNI = _cpu.has_vnni()

log = logging.getLogger(__name__)


def cpuinfo_text(name: str) -> str:
    """A /proc/cpuinfo of the real CPU's name with the flags of feature set `name`."""
    flags = " ".join(("fpu", "sse", "sse2", *FEATURE_SETS[name]))
    return f"processor\t: 0\nmodel name\t: {REAL_NAME} [faked: {name}]\nflags\t\t: {flags}\n"


def bf16_stand_in(real):
    """`openvino_backend.compiled_for_cpu` for a CPU that cannot compute BF16: a BF16 request is compiled with
    the f32 hint (and checked as such), as if OpenVINO had honoured bf16 (see the module docstring)."""
    if getattr(real, "bf16_stand_in", False):
        return real

    def compiled(core, ov_model, config, path):
        if config["INFERENCE_PRECISION_HINT"] == "bf16":
            log.info("%s: BF16 stand-in (this CPU has no BF16): compiled with the f32 hint", path)
            config = {**config, "INFERENCE_PRECISION_HINT": "f32"}
        return real(core, ov_model, config, path)

    compiled.bf16_stand_in, compiled.real = True, real
    return compiled


def use_cpu(monkeypatch, name: str, folder: str | os.PathLike) -> None:
    """Make pfdeploy see a CPU with feature set `name` until `monkeypatch` is undone (writes `folder`/cpuinfo)."""
    if name not in FEATURE_SETS:
        raise ValueError(f"unknown CPU feature set {name!r}; known: {', '.join(FEATURE_SETS)}")
    path = Path(folder) / f"cpuinfo-{name}"
    path.write_text(cpuinfo_text(name))
    monkeypatch.setattr(_cpu, "CPUINFO", path)
    _cpu._cpuinfo_fields.cache_clear()
    if "avx512_bf16" in FEATURE_SETS[name] and not REAL_BF16:
        from pfdeploy.runtime import openvino_backend

        monkeypatch.setattr(openvino_backend, "compiled_for_cpu", bf16_stand_in(openvino_backend.compiled_for_cpu))


def described(name: str | None) -> str:
    """The pytest header line: which CPU facts this run uses."""
    real = ", ".join(_cpu.NOTABLE_FLAGS[i] for i, f in enumerate(_cpu.NOTABLE_FLAGS) if f in REAL_FLAGS) or "none"
    if name is None:
        return f"CPU facts: real ({REAL_NAME}; {real}); fake another set with {ENV}={'|'.join(FEATURE_SETS)}"
    stand_in = "; OpenVINO BF16 by the f32 stand-in" if "avx512_bf16" in FEATURE_SETS[name] and not REAL_BF16 else ""
    return f"CPU facts: faked to {name} (real: {REAL_NAME}; {real}){stand_in}"
