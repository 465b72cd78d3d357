"""Loading published and training checkpoints safely and strictly."""

from __future__ import annotations

import functools
import logging
import math
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pfdeploy.errors import PfdeployError
from pfdeploy.limits import require_regular_file

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("state_dict", "model", "model_ema")
SHOWN = 3
NOT_A_CHECKPOINT = "is not a readable PyTorch checkpoint (damaged, truncated or another format)"
# The weights-only unpickler's words for a well-formed pickle that names a global it will not import.
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([A-Za-z_][\w.]*) was not an allowed global|"
                             r"GLOBAL ([A-Za-z_][\w.]*) whose module [A-Za-z_][\w.]* is blocked")
#: Tensor dtypes a checkpoint may hold (floating weights, integer buffers such as num_batches_tracked).
LOADABLE_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.uint8, torch.int8,
                             torch.int16, torch.int32, torch.int64, torch.bool})


def _refused_global(exc: BaseException) -> str | None:
    """The global a weights-only load refused (`builtins.open`), or None when the pickle is just damaged."""
    if not isinstance(exc, pickle.UnpicklingError):
        return None
    found = _REFUSED_GLOBAL.search(str(exc))
    return None if found is None else (found.group(1) or found.group(2))


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint file with `torch.load(weights_only=True)`; never runs pickled code.

    A FIFO, device or folder is refused before it is opened; a file torch cannot read (random bytes, a
    truncated zip, a damaged pickle) is one PfdeployError saying so; the weights-only message is kept for
    a well-formed pickle that names a global weights-only loading refuses.
    """
    path = require_regular_file(path, "checkpoint", "pass the path of a .pth/.pt file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever torch raises on a hostile file is the file's problem
        name = _refused_global(exc)
        if name is not None:
            raise PfdeployError(
                f"checkpoint {path} holds objects that weights_only loading refuses (it names {name}); "
                "re-save it as a plain state_dict with torch.save(model.state_dict(), path)"
            ) from None
        raise PfdeployError(
            f"checkpoint {path} {NOT_A_CHECKPOINT}: {type(exc).__name__}; check that the file is complete and "
            "was written by torch.save"
        ) from None
    if not isinstance(obj, Mapping):
        raise PfdeployError(f"checkpoint {path} holds a {type(obj).__name__}, not a state_dict")
    return dict(obj)


def _shown_keys(obj: Mapping) -> str:
    keys = [repr(k) if not isinstance(k, str) else k for k in list(obj)[:SHOWN * 3]]
    return ", ".join(keys) + (f" (+{len(obj) - len(keys)} more)" if len(obj) > len(keys) else "")


def tensor_kind_problem(value) -> str | None:
    """Why a checkpoint value cannot be loaded as a weight (None if it can): not a tensor, sparse,
    quantized, nested, on the meta device, or of a dtype such as float8 or complex."""
    if not isinstance(value, torch.Tensor):
        return f"is a {type(value).__name__}, not a tensor"
    if value.is_nested or value.layout != torch.strided:
        return f"is a {'nested' if value.is_nested else str(value.layout).removeprefix('torch.')} tensor"
    if value.is_quantized:
        return f"is a quantized {str(value.dtype).removeprefix('torch.')} tensor"
    if value.device.type != "cpu":
        return f"is on the {value.device.type} device" + (" (it holds no values)" if value.is_meta else "")
    if value.dtype not in LOADABLE_DTYPES:
        return f"is {str(value.dtype).removeprefix('torch.')}"
    return None


def state_dict_from_checkpoint(obj: Mapping, key: str | None = None) -> dict[str, torch.Tensor]:
    """Unwrap `model`/`state_dict`/`model_ema` (or `key`) and strip DistributedDataParallel's `module.`.

    Every key must be a parameter name (str) and every value a dense CPU tensor of a dtype pfdeploy
    loads (see `tensor_kind_problem`); anything else is one PfdeployError naming the key.
    """
    if key is not None:
        if key not in obj:
            raise PfdeployError(f"checkpoint has no {key!r} entry; it has: {_shown_keys(obj)}")
        obj = obj[key]
        if not isinstance(obj, Mapping):
            raise PfdeployError(f"checkpoint entry {key!r} is a {type(obj).__name__}, not a state_dict")
    elif not _is_state_dict(obj):
        found = next((k for k in WRAPPER_KEYS if k in obj and _is_state_dict(obj[k])), None)
        if found is None:
            raise PfdeployError(
                "checkpoint holds no state_dict (looked for tensors at the top level and under "
                f"{', '.join(WRAPPER_KEYS)}); pass a plain state_dict"
            )
        obj = obj[found]
    state: dict[str, torch.Tensor] = {}
    for name, value in obj.items():
        if not isinstance(name, str):
            raise PfdeployError(f"checkpoint key {name!r:.80} is a {type(name).__name__}, not a parameter name; "
                                "save the model's state_dict (its keys are strings)")
        if not name.isprintable():
            raise PfdeployError(f"checkpoint key {name!r:.80} holds control characters, so it is no parameter name; "
                                "the file is damaged or not a state_dict")
        problem = tensor_kind_problem(value)
        if problem:
            raise PfdeployError(f"checkpoint entry {name} {problem}; pfdeploy loads dense CPU tensors of "
                                "float16/bfloat16/float32/float64 weights (and integer buffers): save them so")
        stripped = name.removeprefix("module.")
        if stripped in state:
            raise PfdeployError(f"checkpoint holds both {stripped} and module.{stripped}; keep one of them")
        state[stripped] = value
    return state


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(v, torch.Tensor) for v in obj.values()
    )


def _resizable(param: torch.Tensor, target: torch.Size) -> bool:
    """True when `param` is a square-grid position embedding that bicubic resizing can bring to `target`'s grid
    (same rank, batch 1, same channels, a square token count); anything else is left to the shape check."""
    if param.dim() != len(target) or not param.is_floating_point() or param.dim() not in (3, 4) or param.numel() == 0:
        return False
    if param.dim() == 4:  # PiT: (1, C, side, side)
        return param.shape[:2] == target[:2] and param.shape[0] == 1 and param.shape[2] == param.shape[3]
    side = math.isqrt(param.shape[1])  # ViT: (1, side*side, C)
    return param.shape[0] == 1 and param.shape[2] == target[2] and side * side == param.shape[1] and \
        math.isqrt(target[1]) ** 2 == target[1]


def _resize_grid(param: torch.Tensor, target: torch.Size) -> torch.Tensor:
    """Bicubically resize a square-grid position embedding to `target`'s grid (computed in float32 or wider)."""
    dtype = param.dtype
    param = param if dtype == torch.float64 else param.float()
    if param.dim() == 4:  # PiT: (1, C, side, side)
        return F.interpolate(param, size=tuple(target[2:]), mode="bicubic", align_corners=False).to(dtype)
    side, new_side = math.isqrt(param.shape[1]), math.isqrt(target[1])  # ViT: (1, side*side, C)
    grid = param.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, new_side * new_side, -1).to(dtype)


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Raise a PfdeployError naming the first missing, unexpected and wrong-shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shaped = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if not (missing or unexpected or shaped):
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shaped)):
        if items:
            more = f" (+{len(items) - SHOWN} more)" if len(items) > SHOWN else ""
            parts.append(f"{label}: {', '.join(items[:SHOWN])}{more}")
    cfg = getattr(model, "pretrained_cfg", None)
    guess = suggest_model(state)
    hint = f"; the keys look like {guess!r}" if guess and (cfg is None or guess != cfg.name) else ""
    name = cfg.name if cfg else type(model).__name__
    raise PfdeployError(f"checkpoint does not fit {name}: {'; '.join(parts)}{hint}")


def check_tensor_values(state: Mapping[str, torch.Tensor]) -> None:
    """Raise a PfdeployError naming the first tensor holding NaN/Inf, or a BatchNorm running_var below 0.

    Such weights export and run, and make every output NaN: a verification could never mean anything.
    """
    for key, value in state.items():
        if not value.is_floating_point() and not value.is_complex():
            continue
        bad = int((~torch.isfinite(value)).sum())
        if bad:
            raise PfdeployError(
                f"checkpoint tensor {key} holds {bad} NaN/Inf value(s) of {value.numel()}; the training run "
                "diverged or the file is corrupt: use an earlier checkpoint"
            )
        if key.endswith("running_var") and bool((value < 0).any()):
            raise PfdeployError(
                f"checkpoint tensor {key} holds negative variances (min {float(value.min()):.3g}); a BatchNorm "
                "running_var is never below 0, so the file is corrupt: use another checkpoint"
            )


def check_dtypes(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Refuse integer/bool tensors where the model has floating ones; warn when a cast loses precision.

    Integer buffers (BatchNorm's num_batches_tracked) load as before.
    """
    name = lambda dtype: str(dtype).removeprefix("torch.")  # noqa: E731
    lossy: dict[tuple[str, str], list] = {}  # (from, to) -> [tensors, values, worst relative change, first key]
    for key, target in model.state_dict().items():
        value = state.get(key)
        if value is None or not target.is_floating_point() or value.dtype == target.dtype:
            continue
        if not value.is_floating_point():
            raise PfdeployError(
                f"checkpoint tensor {key} is {name(value.dtype)} where the model has {name(target.dtype)}; "
                "loading would cast the numbers and change what the model computes: save the floating-point "
                "weights (torch.save(model.float().state_dict(), path))"
            )
        cast = value.to(target.dtype)
        if bool((torch.isfinite(value) & ~torch.isfinite(cast)).any()):
            raise PfdeployError(f"checkpoint tensor {key} holds values beyond the range of {name(target.dtype)}; "
                                f"load it into a {name(value.dtype)} model")
        changed = cast.to(value.dtype) != value
        if bool(changed.any()):
            entry = lossy.setdefault((name(value.dtype), name(target.dtype)), [0, 0, 0.0, key])
            rel = ((cast.to(value.dtype) - value).abs() / value.abs().clamp_min(1e-30))[changed].max()
            entry[0], entry[1], entry[2] = entry[0] + 1, entry[1] + int(changed.sum()), max(entry[2], float(rel))
    for (src, dst), (tensors, values, rel, first) in lossy.items():
        log.warning("checkpoint: %d %s tensor(s) (%s, ...) lose precision as %s: %d values change, by up to "
                    "%.2g relative", tensors, src, first, dst, values, rel)


@functools.lru_cache(maxsize=1)
def _registered_layouts() -> tuple[tuple[str, frozenset], ...]:
    """(name, {(key, shape)}) of every registered model's state_dict, built once on the meta device."""
    from pfdeploy.models.registry import create_model, list_models

    layouts = []
    for name in list_models():
        with torch.device("meta"):
            layouts.append((name, frozenset((k, tuple(v.shape)) for k, v in create_model(name).state_dict().items())))
    return tuple(layouts)


def suggest_model(state: Mapping[str, torch.Tensor]) -> str | None:
    """The registered model whose state_dict layout best matches `state` (None if nothing fits)."""
    given = {(k, tuple(v.shape)) for k, v in state.items()}
    best, best_score = None, 0.0
    for name, layout in _registered_layouts():
        score = len(given & layout) / len(given | layout)
        if score > best_score:
            best, best_score = name, score
    return best if best_score > 0.5 else None


def load_checkpoint(model: nn.Module, path: str | Path, key: str | None = None) -> nn.Module:
    """Load `path` into `model` strictly and return it (in eval mode).

    Accepts a plain state_dict or one under `model`, `state_dict` or `model_ema` (or `key`),
    strips a `module.` prefix, and resizes a position embedding whose grid differs (bicubic).
    Loading uses `weights_only=True`: a checkpoint that carries code is refused, never executed.
    Integer or bool tensors where the model has floating ones, NaN/Inf values and negative BatchNorm
    variances are refused; a cast that changes values (float64 -> float32 rounding, float32 -> an
    fp16 model) is stated in a warning.
    """
    state = state_dict_from_checkpoint(read_checkpoint(path), key)
    own = model.state_dict()
    if "pos_embed" in state and "pos_embed" in own and state["pos_embed"].shape != own["pos_embed"].shape:
        if _resizable(state["pos_embed"], own["pos_embed"].shape):
            log.warning("resizing pos_embed %s -> %s", tuple(state["pos_embed"].shape),
                        tuple(own["pos_embed"].shape))
            state["pos_embed"] = _resize_grid(state["pos_embed"], own["pos_embed"].shape)
    check_state_dict(model, state)
    check_dtypes(model, state)
    check_tensor_values(state)
    model.load_state_dict(state, strict=True)
    return model.eval()
