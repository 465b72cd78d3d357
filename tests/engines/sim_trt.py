"""A simulated `tensorrt` module for the builder calls pfdeploy makes, for CPU-only tests.

It follows the documented behaviour pfdeploy's code depends on: TF32 is enabled by default in a new
builder config (BuilderFlag.TF32: "Enabled by default"); `create_timing_cache` returns None for
bytes that are not a timing cache and raises (RuntimeError, as pybind11 turns a C++ exception) on a
truncated one; `add_optimization_profile` returns -1 for a profile TensorRT finds invalid (forced with
`reject_profiles = True`); `set_timing_cache(cache, ignore_mismatch=False)` returns False for
a cache made by another TensorRT version; `build_serialized_network` returns the plan (bytes) or None;
a version-compatible plan needs `Runtime.engine_host_code_allowed` to deserialize. The "plan" is
b"SIMPLAN" (b"SIMPLAN-VC" when built VERSION_COMPATIBLE). A test double of TensorRT, not of pfdeploy:
the real builder runs only in the `tensorrt` tests, on a GPU machine with TensorRT.
"""

from __future__ import annotations

import enum
import json


class SimBuilderTensorRT:
    """Install with monkeypatch: `environment.require_tensorrt = lambda: SimBuilderTensorRT()`."""

    __version__ = "10.9.0"

    class Logger:
        VERBOSE, WARNING = 4, 2

        def __init__(self, level):
            self.level = level

    class NetworkDefinitionCreationFlag(enum.IntEnum):
        STRONGLY_TYPED = 5

    class BuilderFlag(enum.IntEnum):
        FP16 = 0
        INT8 = 1
        TF32 = 6
        VERSION_COMPATIBLE = 13

    class MemoryPoolType(enum.Enum):
        WORKSPACE = 0

    class HardwareCompatibilityLevel(enum.Enum):
        NONE = 0
        AMPERE_PLUS = 1
        SAME_COMPUTE_CAPABILITY = 2

    class ProfilingVerbosity(enum.Enum):
        LAYER_NAMES_ONLY = 0
        DETAILED = 2

    class LayerInformationFormat(enum.Enum):
        ONELINE = 0
        JSON = 1

    class IProgressMonitor:
        def __init__(self):
            pass

    def __init__(self, fail_build: bool = False):
        self.configs: list[SimConfig] = []
        self.fail_build = fail_build
        self.reject_profiles = False
        trt = self

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                return {"flags": flags}

            def create_builder_config(self):
                config = SimConfig(trt)
                trt.configs.append(config)
                return config

            def create_optimization_profile(self):
                return SimProfile()

            def build_serialized_network(self, network, config):
                if trt.fail_build:
                    return None
                cache = config.timing_cache
                if cache is not None:
                    cache.entries += 1  # the build timed some tactics
                return b"SIMPLAN-VC" if trt.BuilderFlag.VERSION_COMPATIBLE in config.flags else b"SIMPLAN"

        class OnnxParser:
            def __init__(self, network, logger):
                self.num_errors = 0

            def parse_from_file(self, path) -> bool:
                return True

        class Runtime:
            def __init__(self, logger):
                self.engine_host_code_allowed = False

            def deserialize_cuda_engine(self, plan: bytes):
                if plan == b"SIMPLAN-VC" and not self.engine_host_code_allowed:
                    return None
                return SimEngine() if plan in (b"SIMPLAN", b"SIMPLAN-VC") else None

        self.Builder, self.OnnxParser, self.Runtime = Builder, OnnxParser, Runtime

    @property
    def config(self) -> SimConfig:
        """The builder config of the last build."""
        return self.configs[-1]


class SimTimingCache:
    def __init__(self, version: str, entries: int = 0):
        self.version, self.entries = version, entries

    def serialize(self) -> bytes:
        return f"SIMCACHE:{self.version}:{self.entries}".encode()


def cache_bytes(version: str = SimBuilderTensorRT.__version__, entries: int = 1) -> bytes:
    """A timing cache file as the simulated TensorRT `version` writes it."""
    return SimTimingCache(version, entries).serialize()


class SimConfig:
    def __init__(self, trt: SimBuilderTensorRT):
        self.trt = trt
        self.flags = {trt.BuilderFlag.TF32}  # TensorRT's default
        self.timing_cache: SimTimingCache | None = None
        self.profiles, self.pool_limits = [], {}
        self.builder_optimization_level = 3
        self.hardware_compatibility_level = trt.HardwareCompatibilityLevel.NONE
        self.profiling_verbosity = trt.ProfilingVerbosity.LAYER_NAMES_ONLY
        self.progress_monitor = None

    def set_flag(self, flag) -> None:
        self.flags.add(flag)

    def clear_flag(self, flag) -> None:
        self.flags.discard(flag)

    def get_flag(self, flag) -> bool:
        return flag in self.flags

    def set_memory_pool_limit(self, pool, size) -> None:
        self.pool_limits[pool] = size

    def add_optimization_profile(self, profile) -> int:
        if self.trt.reject_profiles or not profile.shapes:
            return -1  # TensorRT's answer for an invalid profile; nothing is added
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes):
        if not data:
            return SimTimingCache(self.trt.__version__)
        parts = bytes(data).decode(errors="replace").split(":")
        if parts[0] == "SIMCACHE" and len(parts) != 3:
            raise RuntimeError("timing cache deserialization failed: truncated")  # what pybind11 raises
        if len(parts) != 3 or parts[0] != "SIMCACHE" or not parts[2].isdigit():
            return None  # not a timing cache: TensorRT returns no cache
        return SimTimingCache(parts[1], int(parts[2]))

    def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
        if not isinstance(cache, SimTimingCache):
            raise TypeError("set_timing_cache(): incompatible function arguments")  # what pybind11 raises
        if cache.version != self.trt.__version__ and not ignore_mismatch:
            return False
        self.timing_cache = cache
        return True

    def get_timing_cache(self):
        return self.timing_cache


class SimProfile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, min, opt, max) -> None:  # noqa: A002 - TensorRT's argument names
        self.shapes[name] = (tuple(min), tuple(opt), tuple(max))


class SimEngine:
    def create_engine_inspector(self):
        return self

    def get_engine_information(self, fmt) -> str:
        return json.dumps({"Layers": [{"Name": "conv", "LayerType": "CaskConvolution"}]})
