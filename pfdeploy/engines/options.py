"""Build options of `pfdeploy build-engine`, validated once. Pure."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pfdeploy.errors import PfdeployError

# CLI spelling -> name of the trt.HardwareCompatibilityLevel member (TensorRT 10+).
HARDWARE_COMPAT = {"none": "NONE", "ampere+": "AMPERE_PLUS", "same-cc": "SAME_COMPUTE_CAPABILITY"}
OPT_LEVELS = range(0, 6)


@dataclass(frozen=True)
class BuildOptions:
    """Everything besides the ONNX graph that changes the engine TensorRT produces."""

    workspace_gib: float | None = None
    opt_level: int = 3
    hardware_compat: str = "none"
    version_compatible: bool = False
    inspect: bool = False

    def __post_init__(self):
        if self.hardware_compat not in HARDWARE_COMPAT:
            raise PfdeployError(
                f"hardware compatibility {self.hardware_compat!r} is unknown; choose one of "
                + ", ".join(HARDWARE_COMPAT)
            )
        if (
            isinstance(self.opt_level, bool)
            or not isinstance(self.opt_level, int)
            or self.opt_level not in OPT_LEVELS
        ):
            raise PfdeployError(
                f"--opt-level {self.opt_level!r}: TensorRT builder optimization levels are 0..5"
            )
        if self.workspace_gib is not None and not (self.workspace_gib > 0):
            raise PfdeployError(f"--workspace {self.workspace_gib!r}: give a positive size in GiB, e.g. 4")

    @property
    def workspace_bytes(self) -> int | None:
        """Workspace pool limit in bytes, or None to keep TensorRT's default (all device memory)."""
        return None if self.workspace_gib is None else int(self.workspace_gib * (1 << 30))

    @property
    def hardware_compat_level(self) -> str:
        """Name of the trt.HardwareCompatibilityLevel member this option maps to."""
        return HARDWARE_COMPAT[self.hardware_compat]

    def to_dict(self) -> dict:
        return asdict(self)
