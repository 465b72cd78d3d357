"""engines stage: strongly typed ONNX (FP32/FP16/INT8 Q/DQ) -> TensorRT engine + `<plan>.json` manifest.

TensorRT is imported only inside `build.py` and `environment.py`, lazily; everything else runs anywhere.
"""

from pfdeploy.engines.engine import BuildResult, engine_from_onnx
from pfdeploy.engines.manifest import check_loadable, read_manifest

__all__ = ["BuildResult", "engine_from_onnx", "check_loadable", "read_manifest"]
