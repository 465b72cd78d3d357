"""calibration stage: image sources, preprocessing, calibration sets and INT8 Q/DQ graphs.

onnxruntime is imported lazily inside the functions that need it.
"""

from pfdeploy.calibration.images import iter_images, load_batch, load_labeled
from pfdeploy.calibration.preprocess import Preprocess, preprocess_for
from pfdeploy.calibration.quantize import int8_from_onnx

__all__ = ["Preprocess", "int8_from_onnx", "iter_images", "load_batch", "load_labeled", "preprocess_for"]
