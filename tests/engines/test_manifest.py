"""Manifest contents, atomic write/read, the loadability decision, reuse keys and engine reuse."""

from __future__ import annotations

import json

import pytest

from pfdeploy._io import sha256_bytes
from pfdeploy.engines.build import BuiltPlan
from pfdeploy.engines.engine import (
    build_request,
    default_plan_path,
    read_timing_cache,
    request_key,
    reusable_engine,
    save_engine,
)
from pfdeploy.engines.inspection import layer_info_path
from pfdeploy.engines.manifest import check_loadable, manifest_path, read_manifest, reuse_key, write_manifest
from pfdeploy.engines.options import BuildOptions
from pfdeploy.errors import PfdeployError

PLAN = b"not a real TensorRT plan: bytes standing in for the serialized engine"
LAYERS = json.dumps({"Layers": [{"Name": "conv", "LayerType": "CaskConvolution"}], "Bindings": ["input"]})


def _saved(make_onnx, env, tmp_path, batch=None, timing_cache=None, **options):
    request = build_request(make_onnx(precision="int8"), tmp_path / "out" / "tiny.plan", BuildOptions(**options),
                            batch=batch, timing_cache=timing_cache)
    built = BuiltPlan(PLAN, b"cache-bytes", LAYERS if options.get("inspect") else None)
    return request, save_engine(request, env, built, build_seconds=1.25)


def test_manifest_contents(make_onnx, env_h100, tmp_path):
    request, result = _saved(
        make_onnx,
        env_h100,
        tmp_path,
        batch=(2, 4, 16),
        opt_level=5,
        inspect=True,
        timing_cache=tmp_path / "trt.cache",
    )
    m = read_manifest(result.path)
    assert m == result.manifest and result.manifest_path == manifest_path(result.path)
    assert m["plan"] == {"file": "tiny.plan", "sha256": sha256_bytes(PLAN), "bytes": len(PLAN)}
    assert m["onnx"]["sha256"] == request.facts.sha256 and m["onnx"]["metadata"]["pfdeploy.model"] == "tiny"
    assert (m["model"], m["precision"], m["strongly_typed"]) == ("tiny", "int8", True)
    assert m["preprocess"] == {"size": 8, "crop_pct": 1.0} and m["input_format"] == "float-nchw"
    assert m["profile"]["input"] == {"min": [2, 3, 8, 8], "opt": [4, 3, 8, 8], "max": [16, 3, 8, 8]}
    assert m["batch"] == {"min": 2, "opt": 4, "max": 16}
    assert m["build"]["opt_level"] == 5 and m["build"]["hardware_compat"] == "none"
    assert m["build"]["version_compatible"] is False and m["build"]["inspect"] is True
    assert m["build"]["tf32"] is False  # FP32 layers stay FP32 unless --tf32
    assert m["io"] == {"inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 3, 8, 8]}],
                       "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, 5]}]}
    assert (
        m["environment"]["compute_capability"] == "9.0" and m["environment"]["tensorrt_version"] == "10.3.0"
    )
    assert m["build_seconds"] == 1.25 and m["built_at"].endswith("+00:00")
    assert m["layer_info"] == "tiny.plan.layers.json"
    assert json.loads(layer_info_path(result.path).read_text())["Layers"][0]["Name"] == "conv"
    assert (tmp_path / "trt.cache").read_bytes() == b"cache-bytes"
    assert result.path.read_bytes() == PLAN  # the plan holds only the engine: no bytes prepended
    assert sorted(p.name for p in result.path.parent.iterdir()) == [
        "tiny.plan",
        "tiny.plan.json",
        "tiny.plan.layers.json",
    ]  # no temporary files left


def test_read_manifest_errors(tmp_path):
    plan = tmp_path / "x.plan"
    with pytest.raises(PfdeployError, match="no manifest"):
        read_manifest(plan)
    manifest_path(plan).write_text("{broken")
    with pytest.raises(PfdeployError, match="not valid JSON"):
        read_manifest(plan)
    manifest_path(plan).write_text(json.dumps({"hello": 1}))
    with pytest.raises(PfdeployError, match="not a pfdeploy engine manifest"):
        read_manifest(plan)


def test_same_request_reuses_and_any_change_rebuilds(make_onnx, env_h100, tmp_path):
    request, result = _saved(make_onnx, env_h100, tmp_path)
    again = reusable_engine(request, env_h100)
    assert again is not None and again.reused and again.manifest == result.manifest
    other = build_request(request.facts.path, request.output, batch=(1, 8, 64))
    assert reusable_engine(other, env_h100) is None
    assert reusable_engine(request, {**env_h100, "tensorrt_version": "10.4.0"}) is None
    assert reusable_engine(request, {**env_h100, "gpu_name": "NVIDIA H200"}) is None


def test_tampered_or_missing_plan_is_not_reused(make_onnx, env_h100, tmp_path):
    request, result = _saved(make_onnx, env_h100, tmp_path)
    result.path.write_bytes(PLAN[:10])  # truncated plan, manifest still there
    assert reusable_engine(request, env_h100) is None
    result.path.unlink()
    assert reusable_engine(request, env_h100) is None


def test_changed_onnx_is_not_reused(make_onnx, env_h100, tmp_path):
    request, _ = _saved(make_onnx, env_h100, tmp_path)
    make_onnx(precision="fp32")  # new bytes under the same file name
    changed = build_request(request.facts.path, request.output)
    assert changed.facts.sha256 != request.facts.sha256
    assert reusable_engine(changed, env_h100) is None


OPTION_CHANGES = [
    {"opt_level": 4},
    {"workspace_gib": 2},
    {"hardware_compat": "ampere+"},
    {"version_compatible": True},
    {"inspect": True},
    {"tf32": True},
]


@pytest.mark.parametrize("change", OPTION_CHANGES)
def test_every_build_option_changes_the_reuse_key(make_onnx, env_h100, change):
    path = make_onnx()
    base = request_key(build_request(path), env_h100)
    assert request_key(build_request(path, None, BuildOptions(**change)), env_h100) != base
    assert request_key(build_request(path, batch=(1, 8, 33)), env_h100) != base
    assert request_key(build_request(path), env_h100) == base  # deterministic


def test_build_options_cover_every_field_and_refuse_unknown_ones():
    assert set(BuildOptions().to_dict()) == {next(iter(c)) for c in OPTION_CHANGES}
    with pytest.raises(PfdeployError, match="unknown build option.*tf_32.*known: workspace_gib"):
        BuildOptions.from_keywords(tf_32=True)
    with pytest.raises(PfdeployError, match="tf32='yes': give True or False"):
        BuildOptions(tf32="yes")


def test_unreadable_or_newer_manifest_is_not_silently_rebuilt_over(make_onnx, env_h100, tmp_path):
    request, result = _saved(make_onnx, env_h100, tmp_path)
    newer = {**result.manifest, "manifest_version": 99}
    write_manifest(result.path, newer)
    with pytest.raises(PfdeployError, match="newer pfdeploy .*upgrade pfdeploy, or rebuild over it with --force"):
        reusable_engine(request, env_h100)
    result.manifest_path.write_text("{broken")
    with pytest.raises(PfdeployError, match="not valid JSON.*--force"):
        reusable_engine(request, env_h100)
    result.manifest_path.unlink()  # a plan without a manifest is simply not reusable
    assert reusable_engine(request, env_h100) is None


def test_timing_cache_path_does_not_change_the_key(make_onnx, env_h100, tmp_path):
    path = make_onnx()
    assert request_key(build_request(path), env_h100) == request_key(
        build_request(path, timing_cache=tmp_path / "c"), env_h100
    )


def test_reuse_key_covers_environment():
    args = ("a" * 64, {"input": {"min": [1]}}, {"opt_level": 3})
    env = {"tensorrt_version": "10.3.0", "gpu_name": "A", "compute_capability": "8.0"}
    keys = {
        reuse_key(*args, env),
        reuse_key(*args, {**env, "compute_capability": "8.6"}),
        reuse_key(*args, {**env, "gpu_name": "B"}),
        reuse_key(*args, {**env, "tensorrt_version": "11.0.0"}),
    }
    assert len(keys) == 4


def _manifest(trt="10.3.0", cc="9.0", gpu="NVIDIA H100 80GB HBM3", compat="none", vc=False):
    return {
        "environment": {"tensorrt_version": trt, "compute_capability": cc, "gpu_name": gpu},
        "build": {"hardware_compat": compat, "version_compatible": vc},
    }


LOADABLE = [
    # (manifest kwargs, environment overrides, loadable, words in the reason)
    ({}, {}, True, "loadable"),
    ({}, {"gpu_name": "NVIDIA H100 PCIe"}, True, "built on NVIDIA H100 80GB HBM3"),
    (
        {},
        {"compute_capability": "8.0", "gpu_name": "NVIDIA A100"},
        False,
        "compute capability 9.0 and without",
    ),
    ({"compat": "same-cc"}, {"compute_capability": "8.9"}, False, "compute capability 9.0"),
    ({"compat": "same-cc"}, {"gpu_name": "NVIDIA H200"}, True, "running on NVIDIA H200"),
    ({"compat": "ampere+", "cc": "8.0"}, {"compute_capability": "9.0"}, True, "loadable"),
    ({"compat": "ampere+", "cc": "8.0"}, {"compute_capability": "7.5"}, False, ">= 8.0"),
    ({}, {"tensorrt_version": "10.4.0"}, False, "not built --version-compatible"),
    ({"vc": True}, {"tensorrt_version": "10.4.0"}, True, "version-compatible engine from TensorRT 10.3.0"),
    ({"vc": True, "trt": "10.4.0"}, {"tensorrt_version": "10.3.0"}, False, "older TensorRT"),
    ({"vc": True}, {"tensorrt_version": "11.0.0"}, True, "on 11.0.0"),
    # TensorRT's promise for version-compatible plans: newer runtimes of the same major, plus 8 -> 9/10 and
    # 10 -> 11 (Engine Compatibility / Support Matrix docs), built with 8.6 or newer
    ({"vc": True}, {"tensorrt_version": "12.0.0"}, False, "TensorRT promises"),
    ({"vc": True, "trt": "8.6.1"}, {"tensorrt_version": "10.4.0"}, True, "version-compatible engine from"),
    ({"vc": True, "trt": "8.6.1"}, {"tensorrt_version": "9.2.0"}, True, "version-compatible engine from"),
    ({"vc": True, "trt": "8.6.1"}, {"tensorrt_version": "11.0.0"}, False, "TensorRT promises"),
    ({"vc": True, "trt": "9.2.0"}, {"tensorrt_version": "11.1.0"}, False, "TensorRT promises"),
    ({"vc": True, "trt": "9.2.0"}, {"tensorrt_version": "10.4.0"}, False, "TensorRT promises"),  # no text says so
    ({"vc": True, "trt": "8.5.3"}, {"tensorrt_version": "8.6.1"}, False, "8.6"),
    ({"vc": True, "trt": "11.0.0"}, {"tensorrt_version": "11.4.1"}, True, "version-compatible engine from"),
    ({"trt": "10.3.0.26"}, {"tensorrt_version": "10.3.0.26"}, True, "loadable"),
    ({"cc": None}, {}, False, "compute capability"),
    ({"trt": None}, {}, False, "TensorRT version"),
]


@pytest.mark.parametrize("mkw, envkw, ok, words", LOADABLE)
def test_check_loadable(env_h100, mkw, envkw, ok, words):
    loadable, reason = check_loadable(_manifest(**mkw), {**env_h100, **envkw})
    assert loadable is ok
    assert words in reason


def test_refusals_name_the_fix(env_h100):
    _, reason = check_loadable(_manifest(), {**env_h100, "tensorrt_version": "11.0.0"})
    assert "--force" in reason


def test_default_plan_path_and_timing_cache_reading(tmp_path):
    assert default_plan_path("a/r50.int8.onnx").as_posix() == "a/r50.int8.plan"
    assert default_plan_path("model.bin").as_posix() == "model.bin.plan"
    assert read_timing_cache(None) is None
    assert read_timing_cache(tmp_path / "new.cache") == b""  # a new cache starts empty
    (tmp_path / "old.cache").write_bytes(b"abc")
    assert read_timing_cache(tmp_path / "old.cache") == b"abc"
    with pytest.raises(PfdeployError, match="directory"):
        read_timing_cache(tmp_path)
