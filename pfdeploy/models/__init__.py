"""The parameter-free model zoo: registry, configs, MAC counting and checkpoint loading."""

from pfdeploy.models.checkpoint import load_checkpoint, read_checkpoint, suggest_model
from pfdeploy.models.macs import count_macs, count_parameters
from pfdeploy.models.registry import (
    MODELS,
    ModelConfig,
    create_model,
    get_config,
    list_models,
    resolve_name,
)
from pfdeploy.models.summary import model_summary, parameter_free_layers

__all__ = [
    "MODELS",
    "ModelConfig",
    "count_macs",
    "count_parameters",
    "create_model",
    "get_config",
    "list_models",
    "load_checkpoint",
    "model_summary",
    "parameter_free_layers",
    "read_checkpoint",
    "resolve_name",
    "suggest_model",
]
