"""Parse a config.pbtxt into Triton's own ModelConfig protobuf (shipped by `tritonclient`).

tritonclient is optional (extra `triton`); it is imported only here, when validation is asked for.
"""

from __future__ import annotations

from pfdeploy.errors import MissingDependencyError, PfdeployError


def model_config_class():
    """Triton's `ModelConfig` message class from tritonclient (grpc flavour)."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise MissingDependencyError(
            "validating a Triton config needs tritonclient[grpc]; pip install 'pfdeploy[triton]'"
        ) from exc
    return model_config_pb2.ModelConfig


def parse_model_config(text: str):
    """config.pbtxt text -> ModelConfig message; a PfdeployError names the first schema violation."""
    from google.protobuf import text_format

    message = model_config_class()()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise PfdeployError(f"config.pbtxt does not match Triton's ModelConfig schema: {exc}") from exc
    return message
