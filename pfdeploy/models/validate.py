"""Checks of a model config's values, shared by the family files: each returns what is wrong (None if nothing).

A family's `config_problem(args)` runs on the constructor's full arguments (defaults filled in) before
anything is built, so a bad override (`base_width=-1`, `layers=[0, 0, 0, 0]`, `base_width="8"`) is one line
naming the field and what it must be instead of a RuntimeError from inside torch.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from pfdeploy.errors import shown
from pfdeploy.limits import MAX_BLOCKS, MAX_IMG_SIZE, MAX_NUM_CLASSES, MAX_WIDTH, is_int


def int_problem(name: str, value: Any, low: int = 1, high: int = MAX_WIDTH) -> str | None:
    """`name` must be an integer in [low, high]."""
    if not is_int(value):
        return f"{name} must be an integer, got {shown(value)} ({type(value).__name__})"
    if not low <= value <= high:
        return f"{name} must be in {low}..{high}, got {value}"
    return None


def ints_problem(name: str, values: Any, lengths: range, low: int = 1, high: int = MAX_BLOCKS) -> str | None:
    """`name` must be a list of len(lengths) integers, each in [low, high]."""
    count = f"{lengths.start}" if len(lengths) == 1 else f"{lengths.start}..{lengths.stop - 1}"
    if not isinstance(values, (list, tuple)) or len(values) not in lengths or not all(map(is_int, values)):
        return f"{name} must be a list of {count} integers, got {shown(values)}"
    bad = [v for v in values if not low <= v <= high]
    if bad:
        return f"every {name} entry must be in {low}..{high}, got {list(values)}"
    return None


def ratio_problem(name: str, value: Any, width: int, high: float = 64.0) -> str | None:
    """`name` must be a finite number in (0, high] that leaves at least one hidden unit of `width`."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value) or \
            not 0 < value <= high:
        return f"{name} must be a number in (0, {high:g}], got {shown(value)}"
    if int(width * value) < 1:
        return f"{name} {value} leaves no hidden units at width {width}"
    return None


def bool_problem(name: str, value: Any) -> str | None:
    """`name` must be true or false."""
    return None if isinstance(value, bool) else f"{name} must be true or false, got {shown(value)}"


def common_problem(args: dict[str, Any], min_img_size: int = 1) -> str | None:
    """num_classes, in_chans and img_size, which every family takes. in_chans must be 3: pfdeploy's exports,
    preprocessing (mean/std per RGB channel) and image readers all take RGB images."""
    if args.get("in_chans") != 3 or not is_int(args.get("in_chans")):
        return f"in_chans must be 3 (pfdeploy deploys RGB image models), got {shown(args.get('in_chans'))}"
    return (int_problem("num_classes", args.get("num_classes"), 1, MAX_NUM_CLASSES)
            or int_problem("img_size", args.get("img_size"), min_img_size, MAX_IMG_SIZE))
