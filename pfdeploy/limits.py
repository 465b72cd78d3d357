"""The limits pfdeploy puts on what it reads and runs, stated once and used by every reader.

A file or value past one of these is refused in one line (PfdeployError) before any work, instead of
exhausting memory, recursing until Python gives up, or hanging. The numbers are far beyond what a
classification network or a deployment needs, and well below what would hurt the machine.
"""

from __future__ import annotations

import json
import numbers
import os
import stat
from pathlib import Path
from typing import Any

from pfdeploy.errors import PfdeployError

#: Pixels of one decoded image (width x height; ~8000x8000). Larger files are refused before decoding.
MAX_IMAGE_PIXELS = 64_000_000
#: The largest batch any command exports, runs or benchmarks (the dynamic batch's declared range is 1..MAX_BATCH).
MAX_BATCH = 4096
#: Nesting depth of any JSON pfdeploy reads (state files, manifests, tables, caches, option values).
MAX_JSON_DEPTH = 64
#: Size of any JSON file pfdeploy reads.
MAX_JSON_BYTES = 64 * 2**20
#: Size of a text file pfdeploy reads (a --labels file: one class name per line).
MAX_TEXT_BYTES = 64 * 2**20
#: Images per verification source (`verify --samples`, `deploy --verify-samples`).
MAX_SAMPLES = 4096
#: Blocks in one stage (or in a ViT): far beyond any published network, small enough to build quickly.
MAX_BLOCKS = 1024
#: Channels of any layer (the memory estimate bounds their product with the image size).
MAX_WIDTH = 2**16
#: Stages of a PiT (the published ones have 3).
MAX_STAGES = 8
#: Size of the pfdeploy metadata a .pt2 package carries.
MAX_METADATA_BYTES = 1 << 20
#: Side of a model's square input (img_size) and of the preprocessing's resize (size / crop_pct).
MAX_IMG_SIZE = 4096
#: Classifier outputs of a model (ImageNet-21k has 21,841).
MAX_NUM_CLASSES = 1_000_000
#: Memory a model config may need, estimated before it is built: its float32 parameters (counted on the
#: meta device) plus the largest activation of one image.
MAX_MODEL_BYTES = 8 * 2**30
#: Bytes of the image array of an .npy/.npz image source (2,000 ImageNet crops take 0.3 GB).
MAX_ARRAY_BYTES = 4 * 2**30
#: Size of a TensorRT timing cache file (they hold a few MB of tactic timings).
MAX_TIMING_CACHE_BYTES = 2**30


def is_int(value: Any) -> bool:
    """An integer that is not a bool (JSON `true` is no size, count or width)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def json_depth(obj: Any) -> int:
    """How deeply `obj` nests lists and dicts (a scalar is 0), computed without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def json_from_text(text: str | bytes, what: str, fix: str) -> Any:
    """Parse JSON `text` within MAX_JSON_BYTES and MAX_JSON_DEPTH; anything else is one PfdeployError line.

    `what` names the source ("calibration cache /x/y.json"), `fix` says what to do about it.
    """
    if len(text) > MAX_JSON_BYTES:
        raise PfdeployError(f"{what} is {len(text)} bytes, over pfdeploy's JSON limit of {MAX_JSON_BYTES}; {fix}")
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        obj = json.loads(text)
    except UnicodeDecodeError as exc:
        raise PfdeployError(f"{what} is not UTF-8 text (byte {exc.start}); {fix}") from None
    except RecursionError:
        raise PfdeployError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels; {fix}") from None
    except ValueError as exc:  # json.JSONDecodeError
        raise PfdeployError(f"{what} is not valid JSON ({str(exc).splitlines()[0][:120]}); {fix}") from None
    if json_depth(obj) > MAX_JSON_DEPTH:
        raise PfdeployError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels; {fix}")
    return obj


def require_regular_file(path: str | os.PathLike, what: str, fix: str) -> Path:
    """`path` as a Path if it is a regular file (symlinks followed); a FIFO, device, socket or folder is
    refused before anything opens it (opening a FIFO blocks until a writer comes)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise PfdeployError(f"{what} {path} not found; {fix}") from None
    except OSError as exc:
        raise PfdeployError(f"{what} {path} cannot be read ({exc.strerror or exc}); {fix}") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else \
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else \
            "not a regular file"
        raise PfdeployError(f"{what} {path} is {kind}, not a regular file; {fix}")
    return path


def read_bytes_within(path: str | os.PathLike, what: str, fix: str, limit: int, limit_name: str = "limit") -> bytes:
    """The bytes of `path`, a regular file of at most `limit` bytes ("over pfdeploy's `limit_name` of ..."), or
    one PfdeployError line (a FIFO or device is refused before it is opened)."""
    path = require_regular_file(path, what, fix)
    try:
        size = path.stat().st_size
        if size > limit:
            raise PfdeployError(f"{what} {path} is {size} bytes, over pfdeploy's {limit_name} of {limit}; {fix}")
        return path.read_bytes()
    except OSError as exc:
        raise PfdeployError(f"{what} {path} cannot be read ({exc.strerror or exc}); {fix}") from None


def read_json_file(path: str | os.PathLike, what: str, fix: str) -> Any:
    """Read and parse the JSON file `path` (a regular file within the limits above) or raise one line."""
    data = read_bytes_within(path, what, fix, MAX_JSON_BYTES, "JSON limit")
    return json_from_text(data, f"{what} {path}", fix)


def read_text_file(path: str | os.PathLike, what: str, fix: str) -> str:
    """The UTF-8 text of `path` (a regular file of at most MAX_TEXT_BYTES) or one PfdeployError line."""
    data = read_bytes_within(path, what, fix, MAX_TEXT_BYTES)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PfdeployError(f"{what} {path} is not UTF-8 text (byte {exc.start}); {fix}") from None
