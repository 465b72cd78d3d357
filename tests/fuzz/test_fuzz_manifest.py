"""Fuzzing the engine manifest (`<plan>.json`): `read_manifest`, and what reads it after (`pfdeploy triton
m.plan`, the TensorRT backend's input spec and metadata, the loadability check).

Issue 20: AttributeError for `"io": [1]`, `"plan": 1`, `"onnx": "s"`; ValueError for a shape `["a", 3]`;
RecursionError for deep JSON. No TensorRT is needed: the plan is a placeholder the manifest vouches for.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from fuzz.harness import check_reader, fuzz_tests, json_text, mutated_json
from pfdeploy._io import sha256_bytes
from pfdeploy.engines.manifest import check_loadable, manifest_path, read_manifest
from pfdeploy.errors import PfdeployError
from pfdeploy.runtime.tensorrt_backend import metadata_from_manifest, spec_from_manifest
from pfdeploy.triton import spec_from_artifact

PLAN = b"placeholder plan: no TensorRT on this machine"
ENVIRONMENT = {"tensorrt_version": "10.9.0", "cuda_runtime_version": "12.8", "cuda_driver_version": "12.8",
               "gpu_name": "NVIDIA H100", "compute_capability": "9.0"}
SEED = {
    "format": "pfdeploy-engine-manifest", "manifest_version": 1,
    "plan": {"file": "m.plan", "sha256": sha256_bytes(PLAN), "bytes": len(PLAN)},
    "onnx": {"file": "m.onnx", "sha256": "0" * 64,
             "metadata": {"pfdeploy.model": "r50_hybrid", "pfdeploy.precision": "fp16",
                          "pfdeploy.preprocess": json.dumps({"size": 8, "crop_pct": 1.0})}},
    "model": "r50_hybrid", "checkpoint_sha256": "random", "input_format": "float-nchw", "preprocess": None,
    "calibration": None, "precision": "fp16", "precision_source": "metadata", "strongly_typed": True,
    "profile": {"input": {"min": [1, 3, 8, 8], "opt": [8, 3, 8, 8], "max": [32, 3, 8, 8]}},
    "io": {"inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 3, 8, 8]}],
           "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, 10]}]},
    "batch": {"min": 1, "opt": 8, "max": 32},
    "build": {"workspace_gib": None, "opt_level": 3, "hardware_compat": "none", "version_compatible": False,
              "inspect": False, "tf32": False, "timing_cache": None},
    "environment": ENVIRONMENT, "pfdeploy_version": "0.1.0", "built_at": "2026-01-01T00:00:00+00:00",
    "build_seconds": 1.5, "reuse_key": "k", "layer_info": None,
}


def _engine(folder: Path, manifest_text: bytes | str) -> Path:
    plan = folder / "m.plan"
    plan.write_bytes(PLAN)
    manifest_path(plan).write_bytes(manifest_text if isinstance(manifest_text, bytes) else manifest_text.encode())
    return plan


def _valid_manifest(plan: Path):
    """What reads a manifest after read_manifest: each returns a valid object or refuses in one line."""

    def valid(manifest) -> None:
        folder = plan.parent
        check_reader("manifest via tensorrt backend", lambda: spec_from_manifest(manifest), folder,
                     lambda spec: spec.max_batch >= spec.min_batch >= 1)
        check_reader("manifest via tensorrt backend", lambda: metadata_from_manifest(manifest), folder,
                     lambda meta: all(isinstance(v, str) for v in meta.values()))
        check_reader("manifest via loadability", lambda: check_loadable(manifest, ENVIRONMENT), folder,
                     lambda result: isinstance(result[0], bool) and isinstance(result[1], str))

    return valid


def _valid_spec(spec) -> None:
    assert spec.profile[0] >= 1 and spec.inputs and all(isinstance(t.name, str) for t in spec.inputs)


def check(text: bytes) -> None:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        plan = _engine(folder, text)
        check_reader("manifest", lambda: read_manifest(plan), folder, _valid_manifest(plan))
        check_reader("manifest via triton", lambda: spec_from_artifact(plan), folder, _valid_spec)


test_fuzz_manifest, test_fuzz_manifest_long = fuzz_tests("manifest", mutated_json(SEED), check)


def test_the_seed_is_a_valid_manifest(tmp_path):
    plan = _engine(tmp_path, json_text(SEED))
    _valid_manifest(plan)(read_manifest(plan))
    assert spec_from_artifact(plan).profile == (1, 8, 32)


def _with(**changes):
    data = json.loads(json.dumps(SEED))
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        target = data
        for key in path:
            target = target[key]
        target[last] = value
    return json.dumps(data)


@pytest.mark.parametrize("text, words", [
    (_with(io=[1]), "io must be an object"),  # AttributeError today
    (_with(plan=1), "plan must be an object"),  # AttributeError
    (_with(onnx="s"), "onnx must be an object"),  # AttributeError
    (_with(io__inputs=[{"name": "input", "dtype": "float32", "shape": ["a", 3]}]), "io.inputs[0].shape"),  # ValueError
    (_with(io__inputs=[{"name": "input", "dtype": "float32", "shape": "1234"}]), "io.inputs[0].shape"),
    (_with(batch={"min": 8, "opt": 4, "max": 2}), "batch must be {min, opt, max} integers"),
    (_with(profile={"input": {"min": [1, 3], "opt": [1, 3], "max": [1, 3]}}), "image shapes of rank 4"),
    (_with(onnx__metadata={"pfdeploy.model": 5}), "onnx.metadata must be an object of strings"),
    (_with(layer_info="../../etc/passwd"), "layer_info must be a file name beside the plan"),
    (_with(manifest_version=True), "written by a newer pfdeploy"),
    ('{"format": "pfdeploy-engine-manifest", "io": ' + "[" * 100_000 + "]" * 100_000 + "}",
     "nests deeper than 64 levels"),  # RecursionError
    (b'{"format": "pfdeploy-engine-manifest", "gpu": "\xff"}', "is not UTF-8 text"),
])
def test_hand_edited_manifests_are_one_line(tmp_path, capsys, text, words):
    from pfdeploy.cli import main

    plan = _engine(tmp_path, text)
    with pytest.raises(PfdeployError) as err:
        read_manifest(plan)
    assert words in str(err.value) and "\n" not in str(err.value)
    assert main(["triton", str(plan), "--repo", str(tmp_path / "repo")]) == 1
    out = capsys.readouterr().err
    assert words in out and out.count("\n") == 1 and not (tmp_path / "repo").exists()


def test_a_fifo_manifest_is_refused_without_hanging(tmp_path):
    import os

    from fuzz.harness import no_hang

    plan = tmp_path / "m.plan"
    plan.write_bytes(PLAN)
    os.mkfifo(manifest_path(plan))
    with no_hang(20), pytest.raises(PfdeployError, match="is a FIFO, not a regular file"):
        read_manifest(plan)
