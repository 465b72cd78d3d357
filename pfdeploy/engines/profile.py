"""Optimization-profile shapes (min/opt/max per input) from ONNX inputs and a batch range. Pure."""

from __future__ import annotations

from pfdeploy._text import positive_ints
from pfdeploy.errors import PfdeployError

DEFAULT_BATCH = (1, 8, 32)


def parse_batch_range(text: str, what: str = "--batch") -> tuple[int, int, int]:
    """'MIN,OPT,MAX' (or one number N for N,N,N) -> (min, opt, max), validated; errors name option `what`."""
    values = positive_ints(text, what, "1,8,32")
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise PfdeployError(f"{what} {text!r}: give MIN,OPT,MAX (e.g. 1,8,32) or one batch size")
    return check_batch_range(values)


def check_batch_range(batch) -> tuple[int, int, int]:
    """Validate a (min, opt, max) batch range: positive integers with min <= opt <= max <= MAX_BATCH (the
    largest batch pfdeploy runs; a manifest with a larger one would be refused as damaged)."""
    from pfdeploy.limits import MAX_BATCH

    try:
        lo, opt, hi = (int(b) for b in batch)
    except (TypeError, ValueError):
        raise PfdeployError(f"batch range {batch!r}: give three integers (min, opt, max)") from None
    if lo < 1:
        raise PfdeployError(f"batch range {lo},{opt},{hi}: the minimum batch must be at least 1")
    if not lo <= opt <= hi:
        raise PfdeployError(f"batch range {lo},{opt},{hi}: needs min <= opt <= max, e.g. 1,8,32")
    if hi > MAX_BATCH:
        raise PfdeployError(f"batch range {lo},{opt},{hi}: the largest batch pfdeploy runs is {MAX_BATCH}")
    return lo, opt, hi


def _is_dynamic(dim) -> bool:
    return dim is None or isinstance(dim, str) or (isinstance(dim, int) and dim <= 0)


def profile_shapes(inputs, batch=None) -> dict[str, dict[str, list[int]]]:
    """{input name: {"min": [...], "opt": [...], "max": [...]}} for every input.

    The leading dimension is the batch: a dynamic one takes the batch range (default 1,8,32); a fixed
    one must agree with the range if one is given. Any other dynamic dimension is refused, because
    pfdeploy engines have fixed image sizes (export with a fixed img_size).
    """
    shapes = {}
    for spec in inputs:
        dims = tuple(spec.dims)
        if not dims:
            raise PfdeployError(f"input {spec.name!r} is a scalar; pfdeploy expects a batched image tensor")
        for axis, dim in enumerate(dims[1:], start=1):
            if _is_dynamic(dim):
                raise PfdeployError(
                    f"input {spec.name!r} has a dynamic dimension {axis} ({dim!r}); only the batch may be "
                    "dynamic: re-export with a fixed image size (pfdeploy export --img-size N)"
                )
        rest = [int(d) for d in dims[1:]]
        if _is_dynamic(dims[0]):
            lo, opt, hi = check_batch_range(DEFAULT_BATCH if batch is None else batch)
        else:
            fixed = int(dims[0])
            lo, opt, hi = (fixed,) * 3 if batch is None else check_batch_range(batch)
            if (lo, opt, hi) != (fixed,) * 3:
                raise PfdeployError(
                    f"input {spec.name!r} has a fixed batch of {fixed} "
                    f"but --batch {lo},{opt},{hi} was asked; "
                    f"use --batch {fixed} or re-export with a dynamic batch"
                )
        shapes[spec.name] = {"min": [lo, *rest], "opt": [opt, *rest], "max": [hi, *rest]}
    return shapes
