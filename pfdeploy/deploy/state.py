"""Reuse across runs: every step is keyed on the hash of its inputs and remembered in a state file.

`<out>/.pfdeploy-deploy-state.json` maps step name -> {key, outputs {file: sha256}, result, seconds,
digest}. A step whose key matches, whose result and seconds still have the recorded digest (a value
edited by hand is a miss, never a traceback later) and whose output files still have the recorded
sha256 is reused, not rerun. A state file that cannot be read (broken, deep or huge JSON, a FIFO) is
ignored with a warning: every step runs again.
The state is rewritten atomically after each step, so an interrupted run keeps what it finished.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pfdeploy._io import sha256_bytes, sha256_file, write_json_atomic
from pfdeploy.errors import PfdeployError

log = logging.getLogger(__name__)

STATE_FILE = ".pfdeploy-deploy-state.json"


def key_of(inputs: dict[str, Any]) -> str:
    """Hash of a step's inputs (JSON, sorted keys)."""
    return sha256_bytes(json.dumps(inputs, sort_keys=True, default=str).encode())


def fingerprint_dir(path: str | os.PathLike | None) -> str | None:
    """Cheap identity of a data folder: every file's relative path, size and mtime, hashed.

    Paths are hashed as the file system's bytes (os.fsencode), so names that are not UTF-8 work.
    """
    if path is None:
        return None
    root = Path(path)
    entries = sorted(
        os.fsencode(p.relative_to(root)) + f":{p.stat().st_size}:{p.stat().st_mtime_ns}".encode()
        for p in root.rglob("*")
        if p.is_file()
    )
    return sha256_bytes(b"\n".join(entries))


def result_digest(result: Any, seconds: Any) -> str:
    """sha256 of a step's recorded values (its result and seconds) as JSON: what the state file holds for
    them, so a value edited after the run (keys intact) is noticed and the step runs again."""
    normal = json.loads(json.dumps({"result": result, "seconds": seconds}))  # as written, then read back
    return sha256_bytes(json.dumps(normal, sort_keys=True).encode())


def _entry_problem(entry: Any) -> str | None:
    """What is wrong with one step's entry (None if nothing): {key: str, outputs: {file name: sha256},
    digest: str, seconds: number or null, result: any JSON}."""
    if not isinstance(entry, dict):
        return "not an object"
    if not isinstance(entry.get("key"), str) or not isinstance(entry.get("digest", ""), str):
        return "key/digest not strings"
    outputs = entry.get("outputs", {})
    if not isinstance(outputs, dict) or not all(isinstance(v, str) and Path(k).name == k and k not in ("", ".", "..")
                                                for k, v in outputs.items()):
        return "outputs not {file name: sha256}"
    seconds = entry.get("seconds")
    if seconds is not None and (not isinstance(seconds, (int, float)) or isinstance(seconds, bool)):
        return "seconds not a number"
    return None


def _valid_steps(data: Any) -> dict[str, dict] | None:
    """The `steps` of a state file's JSON, or None when it is not {"steps": {name: {...}}}."""
    steps = data.get("steps") if isinstance(data, dict) else None
    if not isinstance(steps, dict):
        return None
    if any(_entry_problem(entry) for entry in steps.values()):
        return None
    return steps


class StepState:
    """The state file of one output folder."""

    def __init__(self, out: Path, force: bool = False):
        from pfdeploy.limits import read_json_file

        self.path = Path(out) / STATE_FILE
        self.force = force
        self.steps: dict[str, dict] = {}
        self.history: list[dict] = []  # this run's steps, in order: {step, reused, seconds}
        if self.path.exists() or self.path.is_symlink():
            try:  # a FIFO, a device, deep or huge JSON: unreadable like broken JSON
                steps = _valid_steps(read_json_file(self.path, "deploy state", "it is ignored"))
            except PfdeployError:
                steps = None
            if steps is None:
                log.warning("ignoring unreadable %s; every step runs again", self.path)
            self.steps = steps or {}

    def _reusable(self, name: str, key: str) -> dict | None:
        entry = self.steps.get(name)
        if self.force or not entry or entry.get("key") != key:
            return None
        if entry.get("digest") != result_digest(entry.get("result"), entry.get("seconds")):
            log.warning("%s: its recorded result in %s was edited or written by an older pfdeploy; it runs again",
                        name, self.path)
            return None
        for file, digest in entry.get("outputs", {}).items():
            path = self.path.parent / file
            if not path.is_file() or sha256_file(path) != digest:
                return None
        return entry

    def run(self, name: str, inputs: dict[str, Any], outputs: list[Path], fn: Callable[[], dict]) -> dict:
        """Run step `name` (fn returns a JSON-able result) unless its inputs and outputs are unchanged.

        Returns {"result", "reused", "seconds", "key", "outputs"}.
        """
        key = key_of(inputs)
        entry = self._reusable(name, key)
        if entry is not None:
            log.info("%s: reused (inputs unchanged)", name)
            self.record(name, True, entry.get("seconds"))
            return {**entry, "reused": True}
        start = time.perf_counter()
        result = fn()
        seconds = round(time.perf_counter() - start, 3)
        hashes = {Path(p).name: sha256_file(p) for p in outputs if Path(p).is_file()}
        entry = {"key": key, "outputs": hashes, "result": result, "seconds": seconds,
                 "digest": result_digest(result, seconds)}
        self.steps[name] = entry
        write_json_atomic(self.path, {"steps": self.steps})
        log.info("%s: done in %.1f s", name, seconds)
        self.record(name, False, seconds)
        return {**entry, "reused": False}

    def record(self, name: str, reused: bool, seconds: float | None) -> None:
        """Note a step of this run (also for steps that key their reuse themselves, like engines)."""
        self.history.append({"step": name, "reused": bool(reused), "seconds": seconds})

    def output_sha(self, name: str, file: Path) -> str | None:
        """The recorded sha256 of an output of step `name`."""
        return self.steps.get(name, {}).get("outputs", {}).get(Path(file).name)
