"""pfdeploy: deploy parameter-free-layer networks (ICLR 2022) to verified ONNX and TensorRT artifacts."""

__version__ = "0.1.0"

from pfdeploy.errors import PfdeployError

__all__ = ["PfdeployError", "__version__"]
