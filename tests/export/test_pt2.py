"""`pfdeploy export --format pt2` (torch.export + AOTInductor), the pt2 runtime backend, verify and bench on it.

`make test` compiles one package (tests/export/conftest.py `cpu_pt2`: tiny r50_max, FP32, dynamic batch,
for this CPU); the refusals below are all decided before any compile. A fixed batch, uint8 input and the
transformers are compiled in the `slow` tests; CUDA packages in tests/runtime/test_torch_cuda.py (gpu).
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from export_helpers import assert_close

from pfdeploy.cli import main
from pfdeploy.errors import MissingDependencyError, PfdeployError
from pfdeploy.export.pt2 import inductor_configs, pt2_from_model, pt2_toolchain_problem, read_pt2_metadata
from pfdeploy.runtime import backend_for, load
from pfdeploy.runtime.pt2_backend import _batch_of, package_problem


def test_cli_export_writes_a_package_with_the_artifact_metadata(cpu_pt2):
    assert cpu_pt2.exit_code == 0
    assert f"{cpu_pt2.path}: AOTInductor package for cpu" in cpu_pt2.stdout and "batch dynamic" in cpu_pt2.stdout
    meta = read_pt2_metadata(cpu_pt2.path)
    assert {k: meta[k] for k in ("pfdeploy.model", "pfdeploy.format", "pfdeploy.device", "pfdeploy.batch",
                                 "pfdeploy.precision", "pfdeploy.folded_bn", "pfdeploy.num_classes")} == {
        "pfdeploy.model": "r50_max", "pfdeploy.format": "pt2", "pfdeploy.device": "cpu",
        "pfdeploy.batch": "dynamic", "pfdeploy.precision": "fp32", "pfdeploy.folded_bn": "true",
        "pfdeploy.num_classes": "10"}
    assert json.loads(meta["pfdeploy.overrides"])["base_width"] == 8
    assert meta["pfdeploy.torch"] == torch.__version__ and meta["AOTI_DEVICE_KEY"] == "cpu" and meta["AOTI_CPU_ISA"]
    assert not [p for p in cpu_pt2.path.parent.iterdir() if p.name.endswith(".tmp")]  # moved into place whole


def test_package_runs_any_batch_like_the_pytorch_model(cpu_pt2):
    assert backend_for(cpu_pt2.path) == "pt2"
    with load(cpu_pt2.path) as package, load(cpu_pt2.path, backend="torch", checkpoint=cpu_pt2.checkpoint,
                                             fold_bn=False) as reference:
        assert (package.backend, package.device, package.precision) == ("pt2", "cpu", "fp32")
        assert package.input_spec.shape == (None, 3, 32, 32) and package.input_spec.max_batch is None
        assert package.describe()["package"]["folded_bn"] == "true"
        for batch in (1, 3, 8):
            x = package.input_spec.example(batch, seed=batch)
            ref = reference(x)
            assert np.ptp(ref) > 0.05
            assert_close(ref, package(x), rel=1e-4)
        np.testing.assert_array_equal(package(torch.from_numpy(x)), package(x))
        with pytest.raises(PfdeployError, match="must be"):
            package(np.zeros((2, 3, 16, 16), np.float32))


def test_verify_and_bench_take_the_package(cpu_pt2, capsys, tmp_path):
    from pfdeploy.runtime.bench import benchmark

    out = tmp_path / "v.json"
    assert main(["verify", str(cpu_pt2.path), "--checkpoint", str(cpu_pt2.checkpoint), "--samples", "2",
                 "--json", str(out)]) == 0
    assert "run by pt2" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["passed"] and report["backend"] == "pt2" and report["precision"] == "fp32"
    assert max(s["max_rel"] for s in report["sources"].values()) < 1e-4
    bench = benchmark([str(cpu_pt2.path)], batches=(1, 2), seconds=0.02, warmup=1)
    assert {(r["batch"], r["mode"]) for r in bench["results"]} == {(1, "end_to_end"), (2, "end_to_end")}
    assert bench["targets"][0]["backend"] == "pt2" and all(r["images_per_second"] > 0 for r in bench["results"])


def test_package_options_and_devices_are_checked(cpu_pt2):
    with pytest.raises(PfdeployError, match="unknown option"):
        load(cpu_pt2.path, channels_last=True)
    with pytest.raises(PfdeployError, match="runs the artifact's own precision"):
        load(cpu_pt2.path, precision="fp16")
    with pytest.raises(PfdeployError, match="cuda_graph=True needs device='cuda'"):
        load(cpu_pt2.path, cuda_graph=True)
    if not torch.cuda.is_available():
        with pytest.raises(MissingDependencyError, match="needs a CUDA GPU"):
            load(cpu_pt2.path, device="cuda")


def test_damaged_files_are_refused_in_one_line(tmp_path, cpu_pt2):
    text = tmp_path / "notes.pt2"
    text.write_text("not a package")
    with pytest.raises(PfdeployError, match="not a readable .pt2 package"):
        load(text)
    empty = tmp_path / "empty.pt2"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("x/archive_format", "pt2")
    with pytest.raises(PfdeployError, match="no AOTInductor model metadata"):
        read_pt2_metadata(empty)
    with pytest.raises(PfdeployError, match="not found"):
        load(tmp_path / "missing.pt2")
    assert main(["verify", str(text)]) == 1


META_GPU = {"pfdeploy.model": "r50_max", "pfdeploy.device": "cuda", "pfdeploy.compute_capability": "9.0",
            "pfdeploy.gpu": "NVIDIA H200", "AOTI_DEVICE_KEY": "cuda"}
META_AVX512 = {"pfdeploy.model": "r50_max", "pfdeploy.device": "cpu", "AOTI_CPU_ISA": "AVX512"}
AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma"})
AVX512 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512vl", "avx512dq"}


def test_packages_run_only_where_they_were_compiled_for():
    assert "compiled for cuda, not cpu" in package_problem(META_GPU, "cpu")
    assert package_problem(META_GPU, "cuda", compute_capability="9.0") is None
    assert "compute capability 9.0 (NVIDIA H200); this GPU has 8.0" in package_problem(
        META_GPU, "cuda", compute_capability="8.0")
    problem = package_problem(META_AVX512, "cpu", cpu_flags=AVX2_ONLY)
    assert "compiled for AVX512 CPUs" in problem and "avx512f" in problem and "--device cpu" in problem
    assert package_problem(META_AVX512, "cpu", cpu_flags=AVX512) is None
    assert package_problem({**META_AVX512, "AOTI_CPU_ISA": "AVX2"}, "cpu", cpu_flags=AVX2_ONLY) is None
    assert package_problem(META_AVX512, "cpu") is None  # flags unknown: not checked


def test_batch_of_the_metadata():
    assert _batch_of({"pfdeploy.batch": "dynamic"}, "m.pt2") is None
    assert _batch_of({"pfdeploy.batch": "4"}, "m.pt2") == 4
    with pytest.raises(PfdeployError, match="pfdeploy.batch is '0'"):
        _batch_of({"pfdeploy.batch": "0"}, "m.pt2")


def test_cuda_packages_autotune_and_cpu_ones_do_not():
    meta = {"pfdeploy.model": "r50"}
    assert inductor_configs("cuda", meta)["max_autotune"] is True
    assert "max_autotune" not in inductor_configs("cpu", meta)
    assert inductor_configs("cpu", meta, max_autotune=True)["max_autotune"] is True
    assert inductor_configs("cpu", meta)["aot_inductor.metadata"] == meta


@pytest.mark.parametrize("args,message", [
    (["--precision", "fp16"], "compiled for CUDA"),
    (["--fused"], "for CUDA only"),
    (["--opset", "18"], "apply to ONNX graphs"),
    (["--fp16-io"], "apply to ONNX graphs"),
    (["--output", "x.zip"], "must end in .pt2"),
    (["--batch", "5000"], "1..4096"),
])
def test_cli_refusals_come_before_any_compile(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["export", "r50_max", "--format", "pt2", *args]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert list(tmp_path.iterdir()) == []


def test_onnx_export_refuses_the_pt2_options(tmp_path, capsys):
    assert main(["export", "r50", "--device", "cuda", "--output", str(tmp_path / "x.onnx")]) == 1
    assert "apply to --format pt2" in capsys.readouterr().err


def test_a_failed_compile_leaves_no_file(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("C++ compile failed")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", broken)
    with pytest.raises(RuntimeError, match="C\\+\\+ compile failed"):
        pt2_from_model("r50", tmp_path / "m.pt2", overrides={"layers": [1, 1, 1, 1], "base_width": 8, "img_size": 32})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("name,input_format", [("r50_hybrid", "uint8-nhwc"), ("vit_ti_max", "float-nchw"),
                                               ("pit_ti_max", "float-nchw")])
def test_fixed_batch_packages_of_every_family(tmp_path, name, input_format):
    from export_helpers import perturbed_checkpoint, tiny

    overrides = tiny(name)
    ckpt = perturbed_checkpoint(name, tmp_path / "w.pth", {**overrides, "num_classes": 10})
    path = pt2_from_model(name, tmp_path / "m.pt2", checkpoint=ckpt, num_classes=10, overrides=overrides, batch=2,
                          input_format=input_format)
    with load(path) as package, load(path, backend="torch", checkpoint=ckpt, fold_bn=False) as reference:
        assert (package.input_spec.min_batch, package.input_spec.max_batch) == (2, 2)
        assert package.input_spec.input_format == input_format
        x = package.input_spec.example(2)
        assert_close(reference(x), package(x), rel=1e-4)
        with pytest.raises(PfdeployError, match="batch range 2..2"):
            package(package.input_spec.example(3))


def test_a_missing_toolchain_is_named_before_any_compile(monkeypatch, tmp_path):
    assert pt2_toolchain_problem("cpu", cxx="g++") is None
    assert pt2_toolchain_problem("cuda", cxx="g++", cuda_home="/usr/local/cuda") is None
    assert "CUDA_HOME" in pt2_toolchain_problem("cuda", cxx="g++", cuda_home=None)
    assert "C++ compiler" in pt2_toolchain_problem("cpu", cxx=None)
    import pfdeploy.export.pt2 as pt2

    monkeypatch.setattr(pt2, "_cxx_compiler", lambda: None)
    with pytest.raises(MissingDependencyError, match="C\\+\\+ compiler") as info:
        pt2_from_model("r50", tmp_path / "r50.pt2", device="cpu")
    assert "\n" not in str(info.value) and not (tmp_path / "r50.pt2").exists()
