"""export stage: PyTorch -> ONNX (dynamic batch, metadata, in-graph uint8 preprocessing), FP16 graphs."""

from pfdeploy.export.fp16 import FP32_OPS, fp16_from_onnx
from pfdeploy.export.inspect import describe_onnx
from pfdeploy.export.metadata import model_from_metadata, read_metadata
from pfdeploy.export.onnx import onnx_from_model

__all__ = ["FP32_OPS", "describe_onnx", "fp16_from_onnx", "model_from_metadata", "onnx_from_model",
           "read_metadata"]
