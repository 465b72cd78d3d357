"""Triton Inference Server model repositories from pfdeploy artifacts (ONNX and TensorRT engines).

pfdeploy writes the repository; Triton serves it:
`tritonserver --model-repository DIR`.
"""

from pfdeploy.triton.config import TritonOptions, config_from_spec, model_name_for, pbtxt_from_config
from pfdeploy.triton.repository import TritonModel, model_from_artifact, repository_from_artifacts
from pfdeploy.triton.spec import (
    ArtifactSpec,
    TensorSpec,
    spec_from_artifact,
    spec_from_engine,
    spec_from_onnx,
)

__all__ = [
    "ArtifactSpec",
    "TensorSpec",
    "TritonModel",
    "TritonOptions",
    "config_from_spec",
    "model_from_artifact",
    "model_name_for",
    "pbtxt_from_config",
    "repository_from_artifacts",
    "spec_from_artifact",
    "spec_from_engine",
    "spec_from_onnx",
]
