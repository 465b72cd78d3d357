"""Fuzzing the deploy state file (`<out>/.pfdeploy-deploy-state.json`) with its values edited and keys intact,
then what deploy does with a reused step (verify_summary, the benchmark rows).

Issue 20: TypeError, KeyError and AttributeError in pipeline.py and deploy/bench.py, and RecursionError
for deep JSON, which was not caught like other unreadable JSON.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from fuzz.harness import check_reader, fuzz_tests, mutated_json
from pfdeploy.deploy.bench import rows_for
from pfdeploy.deploy.pipeline import verify_summary
from pfdeploy.deploy.state import STATE_FILE, StepState, key_of

VERIFY = {"sources": {"random": {"passed": True, "max_abs": 1e-5, "max_rel": 1e-4, "top1": 1.0, "top5": 1.0,
                                 "cosine": 1.0},
                      "data": {"passed": True, "max_abs": 2e-5, "max_rel": 1e-4, "top1": 1.0, "top5": 1.0,
                               "cosine": 1.0}}}
BENCH = {"schema": "pfdeploy.bench/1", "results": [
    {"label": "m.fp32.onnx", "batch": 1, "mode": "end-to-end", "images_per_second": 100.0,
     "latency_ms": {"p50": 10.0, "p90": 11.0, "p99": 12.0}},
    {"label": "m.fp32.onnx", "batch": 8, "mode": "device", "skipped": "no GPU"}]}
STEPS = {"verify m.fp32.onnx": ({"sha256": "a"}, VERIFY), "bench": ({"batches": [1, 8]}, BENCH),
         "export fp32": ({"model": "r50"}, {})}


def _seed() -> dict:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        (folder / "m.fp32.onnx").write_bytes(b"graph")
        state = StepState(folder)
        for step, (inputs, result) in STEPS.items():
            outputs = [folder / "m.fp32.onnx"] if step == "export fp32" else []
            state.run(step, inputs, outputs, lambda result=result: result)
        return json.loads((folder / STATE_FILE).read_text())


SEED = _seed()


def _reused(folder: Path):
    """What deploy reads from a state: each step reused or run again, and the reused results consumed."""
    state = StepState(folder)
    results = {}
    for step, (inputs, _) in STEPS.items():
        results[step] = state._reusable(step, key_of(inputs))
    return results


def _consumed(results: dict) -> None:
    for step, entry in results.items():
        if entry is None:
            continue  # a miss: the step runs again
        assert entry["result"] == STEPS[step][1], step  # a reused result is exactly what was written
    if results["verify m.fp32.onnx"] is not None:
        assert verify_summary(results["verify m.fp32.onnx"]["result"], "fp32")["passed"]
    if results["bench"] is not None:
        assert len(rows_for(results["bench"]["result"], "m.fp32.onnx")) == 2


def check(text: bytes) -> None:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        (folder / "m.fp32.onnx").write_bytes(b"graph")
        (folder / STATE_FILE).write_bytes(text)
        check_reader("deploy state", lambda: _reused(folder), folder, _consumed)


test_fuzz_state, test_fuzz_state_long = fuzz_tests("state", mutated_json(SEED), check)


def test_the_seed_reuses_every_step():
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        (folder / "m.fp32.onnx").write_bytes(b"graph")
        (folder / STATE_FILE).write_text(json.dumps(SEED))
        results = _reused(folder)
        assert all(entry is not None for entry in results.values())
        _consumed(results)
