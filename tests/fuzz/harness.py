"""The fuzz harness: mutations of a valid file, and the property every reader of pfdeploy must keep.

Mutations (hypothesis strategies, derandomized: the same inputs on every run and machine):
- bytes: random bytes, truncations, bit flips and overwritten ranges of a valid seed file;
- JSON: a valid document with values replaced by values of another type (null, bools, huge or
  non-finite numbers, strings, lists, objects, nesting deeper than pfdeploy's limit), keys removed,
  or its text mutated as bytes.

The property (`check_reader`): the reader returns a valid object (the caller's `valid` says what that is)
or raises PfdeployError whose message is one line; any other exception fails the test (hypothesis shrinks
it to a minimal input), a call past its time limit fails as a hang, and the folder the inputs are in must
be unchanged afterwards (no file written, none left behind).

Every reader has a bounded run in `make test` (BOUNDED examples) and a long one marked `slow` (LONG
examples); the number of inputs each reader ran is printed at the end of the session (conftest.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pfdeploy.errors import PfdeployError

BOUNDED = int(os.environ.get("PFDEPLOY_FUZZ_BOUNDED", "25"))  # inputs per reader in `make test`
LONG = int(os.environ.get("PFDEPLOY_FUZZ_LONG", "10000"))  # inputs per reader under `slow`
HANG_SECONDS = 30.0  # one input taking longer than this is a hang
COUNTS: Counter = Counter()  # reader -> inputs run in this session (printed by conftest.py)
FAILURES: Counter = Counter()  # reader -> inputs refused with a PfdeployError

_COMMON = dict(derandomize=True, database=None, deadline=None, print_blob=False,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.filter_too_much, HealthCheck.large_base_example])


class Hang(BaseException):
    """A reader ran past its time limit (a BaseException: no `except Exception` in the product hides it)."""


@contextlib.contextmanager
def no_hang(seconds: float = HANG_SECONDS):
    """Raise Hang in the main thread if the block runs longer than `seconds` (SIGALRM; also interrupts a
    blocking open() of a FIFO, which Python retries only when the handler returns)."""

    def alarm(signum, frame):
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every entry under `folder` (relative name -> size, mtime): what "no file written" compares."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            info = path.lstat()
            found[str(path.relative_to(folder))] = (info.st_size, info.st_mtime_ns)
    return found


LAST_INPUT = os.environ.get("PFDEPLOY_FUZZ_LAST")  # a file each input is copied to first: what a native crash ran


def keep_last(data: bytes) -> None:
    """With $PFDEPLOY_FUZZ_LAST set, save `data` there before it is read (a segfault in a library leaves no
    traceback to shrink; the file is the input that crashed it)."""
    if LAST_INPUT:
        Path(LAST_INPUT).write_bytes(data)


def check_reader(reader: str, call: Callable[[], Any], folder: Path, valid: Callable[[Any], None] | None = None):
    """Run `call()` once under the property (see the module docstring); returns its result or None."""
    before = snapshot(folder)
    start = time.monotonic()
    try:
        with no_hang():
            result = call()
    except PfdeployError as exc:
        assert "\n" not in str(exc).strip(), f"{reader}: a PfdeployError of several lines: {exc}"
        FAILURES[reader] += 1
        result = None
    else:
        if valid is not None:  # a check asserts, or returns False for an invalid object (None: no verdict)
            assert valid(result) is not False, f"{reader}: returned an object that is not valid: {result!r:.200}"
    finally:
        COUNTS[reader] += 1
    assert time.monotonic() - start < HANG_SECONDS
    assert snapshot(folder) == before, f"{reader} wrote or removed files in {folder}"
    return result


# --- strategies -------------------------------------------------------------------------------------------


def _flip(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for position, bit in flips:
        out[position % len(out)] ^= 1 << bit
    return bytes(out)


def _overwrite(data: bytes, position: int, chunk: bytes) -> bytes:
    position %= len(data)
    return data[:position] + chunk + data[position + len(chunk):]


def mutated_bytes(seed: bytes, max_random: int = 4096) -> st.SearchStrategy[bytes]:
    """Random bytes, truncations, bit flips and overwritten ranges of `seed` (plus `seed` itself)."""
    assert seed, "a seed file"
    positions = st.integers(0, len(seed) - 1)
    return st.one_of(
        st.just(None).map(lambda _: seed),  # (not st.just(seed): its repr would print the whole file)
        st.binary(max_size=max_random),
        st.integers(0, len(seed) - 1).map(lambda n: seed[:n]),
        st.lists(st.tuples(positions, st.integers(0, 7)), min_size=1, max_size=16).map(lambda f: _flip(seed, f)),
        st.tuples(positions, st.binary(min_size=1, max_size=64)).map(lambda a: _overwrite(seed, *a)),
        st.tuples(st.integers(0, len(seed) - 1), st.binary(max_size=256)).map(lambda a: seed[:a[0]] + a[1]),
    )


DEEP = "__pfdeploy_fuzz_deep_{}__"  # a placeholder string replaced by nesting too deep for json.dumps


def _other_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
        st.sampled_from([0, -1, 1, 2**31, 2**63, 10**400, -(10**400)]),
        st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e30, -1e30, float("nan"), float("inf")]),
        st.text(max_size=12), st.sampled_from(["", "a", "/etc/passwd", "../../x", "1234", "3.7", "\x00", "é"]),
        st.integers(65, 5000).map(DEEP.format),
    )
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                        max_leaves=8)


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys/indices) to a value in a JSON document, the root included."""
    found = [prefix]
    if isinstance(obj, dict):
        for key, value in obj.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            found += _paths(value, (*prefix, index))
    return found


def _replaced(obj: Any, path: tuple, value: Any, delete: bool) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(obj, dict):
        out = dict(obj)
        if delete and not rest:
            out.pop(head, None)
        else:
            out[head] = _replaced(obj[head], rest, value, delete)
        return out
    out = list(obj)
    if delete and not rest:
        del out[head]
    else:
        out[head] = _replaced(obj[head], rest, value, delete)
    return out


_DEEP_MARKER = re.compile(r'"__pfdeploy_fuzz_deep_(\d+)__"')


def json_text(obj: Any) -> str:
    """`obj` as JSON text (NaN/Infinity allowed, as Python writes them), deep placeholders expanded."""
    return _DEEP_MARKER.sub(lambda m: "[" * int(m.group(1)) + "]" * int(m.group(1)), json.dumps(obj, allow_nan=True))


@st.composite
def _confused(draw, seed_obj: Any) -> str:
    paths = _paths(seed_obj)
    obj = seed_obj
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths))
        delete = bool(path) and draw(st.booleans()) and draw(st.booleans())
        try:
            obj = _replaced(obj, path, draw(_other_values()), delete)
        except (KeyError, IndexError, TypeError):  # the path went away with an earlier replacement
            continue
    return json_text(obj)


def mutated_json(seed_obj: Any) -> st.SearchStrategy[bytes]:
    """Type-confused versions of the JSON document `seed_obj` (most inputs), or its text mutated as bytes."""
    seed = json_text(seed_obj).encode()
    return st.one_of(_confused(seed_obj).map(str.encode), _confused(seed_obj).map(str.encode), mutated_bytes(seed))


def fuzz_tests(reader: str, strategy: st.SearchStrategy, check: Callable[[Any], None]):
    """(bounded test, long test marked slow) running `check(input)` on inputs drawn from `strategy`."""

    @settings(max_examples=BOUNDED, **_COMMON)
    @given(strategy)
    def bounded(value):
        check(value)

    @pytest.mark.slow
    @settings(max_examples=LONG, **_COMMON)
    @given(strategy)
    def long(value):
        check(value)

    bounded.__name__ = f"test_fuzz_{reader}"
    long.__name__ = f"test_fuzz_{reader}_long"
    return bounded, long
