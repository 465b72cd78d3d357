"""Build options of `pfdeploy build-engine`, validated once. Pure."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from pfdeploy.errors import PfdeployError

# CLI spelling -> name of the trt.HardwareCompatibilityLevel member (TensorRT 10+).
HARDWARE_COMPAT = {"none": "NONE", "ampere+": "AMPERE_PLUS", "same-cc": "SAME_COMPUTE_CAPABILITY"}
OPT_LEVELS = range(0, 6)


@dataclass(frozen=True)
class BuildOptions:
    """Everything besides the ONNX graph that changes the engine TensorRT produces.

    workspace_gib: workspace pool limit (None: TensorRT's default). opt_level: builder optimization
    level 0-5. hardware_compat: "none", "ampere+" or "same-cc". version_compatible: the plan also loads
    on newer TensorRT. inspect: keep the engine's layer information. tf32: let FP32 layers use TF32
    (10-bit mantissa inputs); off by default, because TensorRT's own default (on) breaks the FP32
    verification tolerance (max_rel 1e-4).
    """

    workspace_gib: float | None = None
    opt_level: int = 3
    hardware_compat: str = "none"
    version_compatible: bool = False
    inspect: bool = False
    tf32: bool = False

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
        for name in ("version_compatible", "inspect", "tf32"):
            if not isinstance(getattr(self, name), bool):
                raise PfdeployError(f"build option {name}={getattr(self, name)!r}: give True or False")
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
        """Plain-JSON view (recorded in the manifest's `build` section and the reuse key)."""
        return asdict(self)

    @classmethod
    def from_keywords(cls, **options) -> BuildOptions:
        """BuildOptions from keyword arguments, refusing unknown names in one line."""
        unknown = sorted(set(options) - {f.name for f in fields(cls)})
        if unknown:
            known = ", ".join(f.name for f in fields(cls))
            raise PfdeployError(f"unknown build option(s) {', '.join(unknown)}; known: {known}")
        return cls(**options)
