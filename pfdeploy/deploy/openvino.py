"""OpenVINO variants in `deploy`: the deployed ONNX graphs run by OpenVINO on this CPU.

- **int8**: the INT8 Q/DQ graph (`<stem>.int8.onnx`, or `.int8-cpu.onnx`) run by OpenVINO, which
  executes its convolutions, pools and matrix products in INT8;
- **bf16**: the FP32 graph computed in BF16 (OpenVINO's INFERENCE_PRECISION_HINT bf16), only on CPUs
  with AVX512-BF16 or AMX; elsewhere it is listed as skipped with the reason.

Each variant is verified against PyTorch with the openvino backend (bf16 with the bf16 tolerances),
evaluated on labelled --val-data, and benchmarked in the same interleaved run as the other
artifacts. `--openvino auto` (default) adds them when OpenVINO is installed, `yes` fails before any
work without it, `no` leaves them out.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pfdeploy.errors import MissingDependencyError, PfdeployError

MODES = ("auto", "yes", "no")
INSTALL = "pip install 'pfdeploy[openvino]'"


@dataclass(frozen=True)
class Variant:
    """One OpenVINO variant: the deployed graph it runs, OpenVINO's compute precision, and the
    precision it is verified as (the tolerance row)."""

    graph: str  # "fp32" or "int8"
    compute: str  # "fp32" or "bf16"
    precision: str  # "bf16" or "int8"

    def label(self, file: str) -> str:
        """How reports and benchmarks name the variant: `<file> [openvino]` or `<file> [openvino bf16]`."""
        return f"{file} [openvino{' bf16' if self.compute == 'bf16' else ''}]"


def plan_variants(precisions: tuple[str, ...], bf16_capable: bool, cpu: str = "this CPU") -> tuple[list[Variant],
                                                                                                   list[dict]]:
    """(variants to add, skipped [{variant, reason}]) for the deployed `precisions` on a CPU that does
    or does not compute BF16 natively."""
    variants, skipped = [], []
    if "fp32" in precisions:
        if bf16_capable:
            variants.append(Variant("fp32", "bf16", "bf16"))
        else:
            skipped.append({"variant": "bf16", "reason": f"{cpu} has no AVX512-BF16 or AMX, so OpenVINO would not "
                                                         "compute BF16"})
    if "int8" in precisions:
        variants.append(Variant("int8", "fp32", "int8"))
    return variants, skipped


def openvino_plan(mode: str, precisions: tuple[str, ...],
                  installed: Callable[[], bool] | None = None) -> dict[str, Any]:
    """What deploy does with OpenVINO here: {"status", "note", "variants": [Variant], "skipped"}.

    `mode` "yes" without OpenVINO raises (MissingDependencyError) before any work.
    """
    from pfdeploy._cpu import cpu_summary, has_bf16

    if mode not in MODES:
        raise PfdeployError(f"--openvino {mode!r}: use one of {', '.join(MODES)}")
    if mode == "no":
        return {"status": "not requested", "note": "--openvino no", "variants": [], "skipped": []}
    if not (installed or (lambda: importlib.util.find_spec("openvino") is not None))():
        if mode == "yes":
            raise MissingDependencyError(f"--openvino yes needs OpenVINO; {INSTALL}")
        return {"status": "skipped", "note": f"OpenVINO is not installed ({INSTALL})", "variants": [], "skipped": []}
    from pfdeploy.runtime.openvino_backend import import_openvino

    openvino = import_openvino()
    variants, skipped = plan_variants(precisions, has_bf16(), cpu_summary())
    note = f"OpenVINO {openvino.__version__.split('-')[0]} on {cpu_summary()}"
    return {"status": "added" if variants else "none applicable", "note": note, "variants": variants,
            "skipped": skipped}


def plan_summary(plan: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    """The report.json `openvino` section: status, note, the variants' labels and the skipped ones."""
    return {"status": plan["status"], "note": plan["note"], "variants": labels, "skipped": plan["skipped"]}
