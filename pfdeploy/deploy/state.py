"""Reuse across runs: every step is keyed on the hash of its inputs and remembered in a state file.

`<out>/.pfdeploy-deploy-state.json` maps step name -> {key, outputs {file: sha256}, result}. A step
whose key matches and whose output files still have the recorded sha256 is reused, not rerun.
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


def _valid_steps(data: Any) -> dict[str, dict] | None:
    """The `steps` of a state file's JSON, or None when it is not {"steps": {name: {...}}}."""
    steps = data.get("steps") if isinstance(data, dict) else None
    if not isinstance(steps, dict):
        return None
    for entry in steps.values():
        if not isinstance(entry, dict) or not isinstance(entry.get("outputs", {}), dict):
            return None
    return steps


class StepState:
    """The state file of one output folder."""

    def __init__(self, out: Path, force: bool = False):
        self.path = Path(out) / STATE_FILE
        self.force = force
        self.steps: dict[str, dict] = {}
        self.history: list[dict] = []  # this run's steps, in order: {step, reused, seconds}
        if self.path.is_file():
            try:
                steps = _valid_steps(json.loads(self.path.read_text()))
            except (OSError, ValueError):
                steps = None
            if steps is None:
                log.warning("ignoring unreadable %s; every step runs again", self.path)
            self.steps = steps or {}

    def _reusable(self, name: str, key: str) -> dict | None:
        entry = self.steps.get(name)
        if self.force or not entry or entry.get("key") != key:
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
        entry = {"key": key, "outputs": hashes, "result": result, "seconds": seconds}
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
