"""The vocabularies every stage shares: precisions, input formats, calibration methods, INT8 targets.

One definition each, so the CLI, the stage functions and the deploy options accept the same words.
"""

#: Precisions of ONNX artifacts (and of engines compiled from them), in pipeline order.
PRECISIONS = ("fp32", "fp16", "int8")
#: Precisions `export` writes directly (INT8 comes from `quantize` on the fp32 graph).
EXPORT_PRECISIONS = ("fp32", "fp16")
#: Graph inputs: normalized float NCHW, or raw uint8 NHWC pixels normalized inside the graph.
INPUT_FORMATS = ("float-nchw", "uint8-nhwc")
#: Memory layout of each input format.
LAYOUTS = {"float-nchw": "NCHW", "uint8-nhwc": "NHWC"}
#: Activation-range calibration methods (onnxruntime.quantization's calibrators).
CALIB_METHODS = ("entropy", "percentile", "minmax")
#: Who runs an INT8 graph: TensorRT's symmetric Q/DQ graph, or its ONNX Runtime CPU re-encoding.
INT8_TARGETS = ("tensorrt", "cpu")
