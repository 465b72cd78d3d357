"""`pfdeploy deploy` end to end on the smallest trained fixture: artifacts, report, reuse, bad input."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest

from pfdeploy._io import sha256_file
from pfdeploy.cli import main
from pfdeploy.deploy import DeployOptions, deploy, options_for_fixture
from pfdeploy.export import read_metadata

FIXTURE = "r50_hybrid_digits"  # 130k parameters, 32x32 digits: the cheapest trained model
FAST = {"calib_images": 64, "bench_batches": (1, 4), "bench_seconds": 0.1}
CLI_FAST = ["--calib-images", "64", "--bench-batch", "1,4", "--bench-seconds", "0.1"]


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module", autouse=True)
def bf16_cpu(tmp_path_factory):
    """Every deploy in this module runs on a CPU that computes BF16, so the `[openvino bf16]` row goes through
    export, verification, evaluation, benchmark and reuse on every machine: for real where the CPU has
    AVX512-BF16/AMX, faked elsewhere (tests/cpu_facts.py)."""
    from cpu_facts import use_cpu

    from pfdeploy import _cpu

    with pytest.MonkeyPatch.context() as patch:
        if not _cpu.has_bf16():
            use_cpu(patch, "avx512-bf16", tmp_path_factory.mktemp("cpu"))
        yield


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    out = tmp_path_factory.mktemp("deploy") / "out"
    opts = options_for_fixture(FIXTURE, out, precisions=("fp32", "fp16", "int8"), **FAST)
    return out, deploy(opts)


def test_report_is_consistent_with_the_artifacts(deployed):
    out, report = deployed
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    onnx_artifacts = [a for a in report["artifacts"] if a["format"] == "onnx" and a["backend"] == "onnxruntime"]
    assert [a["precision"] for a in onnx_artifacts] == ["fp32", "fp16", "int8"]
    for artifact in report["artifacts"]:
        path = out / artifact["file"]
        assert path.stat().st_size == artifact["bytes"]
        assert sha256_file(path) == artifact["sha256"]
        if artifact["format"] == "onnx":
            assert read_metadata(path)["pfdeploy.precision"] == artifact["graph_precision"]
            if artifact["backend"] == "onnxruntime":
                assert artifact["graph_precision"] == artifact["precision"]
            check = artifact["tensorrt_check"]  # every graph here is meant for TensorRT
            assert (check["checked"], check["passed"], check["violations"], check["trt_version"]) == (
                True, True, [], "10.1")
        verify = artifact["verify"]
        assert verify["passed"], verify
        assert 0.0 <= verify["top1_agreement"] <= 1.0 and verify["max_abs"] >= 0.0
        judged = ["data"] if artifact["precision"] == "int8" else ["random", "real-looking", "data"]
        assert verify["judged_on"] == judged  # the fixture's val images were used
        assert verify["max_abs"] == max(verify["sources"][s]["max_abs"] for s in judged)
        assert verify["top1_agreement"] == min(verify["sources"][s]["top1"] for s in judged)
        rows = [b for b in artifact["bench"] if b["mode"] == "end_to_end"]
        assert sorted(b["batch"] for b in rows) == [1, 4]
        assert all(b["img_per_s"] > 0 and 0 < b["p50_ms"] <= b["p99_ms"] for b in rows)
        assert 0.0 <= artifact["accuracy"]["top1"] <= 100.0
    fp32 = onnx_artifacts[0]
    assert fp32["accuracy"]["top1"] == pytest.approx(report["accuracy_reference"]["top1"], abs=0.5)
    assert report["accuracy_reference"]["top1"] > 90.0  # the trained fixture, not random weights
    assert report["model"]["random_weights"] is False
    assert report["model"]["checkpoint_sha256"] == sha256_file(report["model"]["checkpoint"])
    assert report["engines"]["status"] == ("built" if _has_tensorrt() else "skipped")
    assert report["engines"]["note"]
    md = (out / "report.md").read_text()
    for artifact in report["artifacts"]:
        assert f"### {artifact['file']}" in md and f"{artifact['bytes'] / 1e6:.2f}" in md
    assert "TensorRT engines:" in md and "| TensorRT check |" in md and "PASS (10.1)" in md
    leftovers = [p.name for p in out.iterdir() if p.name.endswith((".tmp", ".export"))]
    assert not leftovers


def test_second_run_reuses_everything(deployed, capsys):
    out, first = deployed
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.onnx")}
    code = main(["deploy", "--fixture", FIXTURE, "--precision", "fp32,fp16,int8", "--out", str(out), *CLI_FAST])
    printed = capsys.readouterr().out
    assert code == 0
    second = json.loads((out / "report.json").read_text())
    assert second["reused"] is True and all(s["reused"] for s in second["steps"])
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.onnx")} == mtimes
    assert [a["sha256"] for a in second["artifacts"]] == [a["sha256"] for a in first["artifacts"]]
    assert "Every step was reused" in printed and FIXTURE in printed


def test_openvino_variants_are_verified_benchmarked_and_named_fastest(deployed):
    """On a CPU machine with OpenVINO: the INT8 graph run by OpenVINO is a row of its own (verified against
    PyTorch, evaluated, benched in the same run), and so is the FP32 graph computed in BF16 (this module's CPU
    computes BF16; its absence is test_bf16_is_skipped_with_the_reason_on_a_cpu_without_it)."""
    pytest.importorskip("openvino", reason="the OpenVINO variants need pip install 'pfdeploy[openvino]'")
    out, report = deployed
    ov = [a for a in report["artifacts"] if a["backend"] == "openvino"]
    by_precision = {a["precision"]: a for a in ov}
    assert by_precision["int8"]["file"] == f"{FIXTURE}.int8.onnx"
    assert by_precision["int8"]["label"] == f"{FIXTURE}.int8.onnx [openvino]"
    bf16 = by_precision["bf16"]
    assert (bf16["file"], bf16["label"]) == (f"{FIXTURE}.fp32.onnx", f"{FIXTURE}.fp32.onnx [openvino bf16]")
    assert (bf16["graph_precision"], bf16["compute_precision"]) == ("fp32", "bf16")
    assert report["openvino"]["skipped"] == []
    assert sorted(report["openvino"]["variants"]) == sorted(a["label"] for a in ov)
    for artifact in ov:
        assert artifact["verify"]["passed"] and artifact["accuracy"]["backend"] == "openvino"
        assert artifact["accuracy"]["top1"] >= report["accuracy_reference"]["top1"] - 1.0
        assert sorted(b["batch"] for b in artifact["bench"] if b["mode"] == "end_to_end") == [1, 4]
    bench = json.loads((out / "bench.json").read_text())
    assert {t["label"]: t["backend"] for t in bench["targets"]}[f"{FIXTURE}.int8.onnx [openvino]"] == "openvino"
    assert {t["label"]: t["backend"] for t in bench["targets"]}[f"{FIXTURE}.int8.onnx"] == "onnxruntime"
    fastest = report["fastest_verified"]
    best = max((b["img_per_s"], a["label"]) for a in report["artifacts"] if a["verify"]["passed"]
               for b in a["bench"] if b["batch"] == 4 and b["mode"] == "end_to_end")
    assert (fastest["img_per_s"], fastest["label"], fastest["batch"]) == (*best, 4)
    md = (out / "report.md").read_text()
    assert f"### {FIXTURE}.int8.onnx [openvino]" in md and "Fastest verified artifact:" in md


@pytest.mark.parametrize("cpu", ["avx2", "avx512-vnni"])
def test_bf16_is_skipped_with_the_reason_on_a_cpu_without_it(cpu_features, cpu):
    pytest.importorskip("openvino", reason="the OpenVINO variants need pip install 'pfdeploy[openvino]'")
    from pfdeploy.deploy.openvino import openvino_plan

    cpu_features(cpu)
    plan = openvino_plan("auto", ("fp32", "fp16", "int8"))
    assert [v.precision for v in plan["variants"]] == ["int8"]
    assert [s["variant"] for s in plan["skipped"]] == ["bf16"]
    assert "has no AVX512-BF16 or AMX" in plan["skipped"][0]["reason"] and f"[faked: {cpu}]" in plan["note"]
    cpu_features("amx")
    assert [v.label("m.fp32.onnx") for v in openvino_plan("auto", ("fp32",))["variants"]] == [
        "m.fp32.onnx [openvino bf16]"]


def test_changed_calibration_redoes_only_int8(deployed, tmp_path):
    """Also: calibration images whose names are not UTF-8 (the fingerprint hashes the file system's bytes)."""
    import os

    from pfdeploy.calibration.fixtures import get_fixture

    out = tmp_path / "copy"
    shutil.copytree(deployed[0], out)
    calib = shutil.copytree(get_fixture(FIXTURE).calib_dir, tmp_path / "calib")
    first = next(p for p in sorted((calib / "3").iterdir()))
    os.rename(first, os.path.join(os.fsencode(first.parent), b"caf\xe9-\xff.png"))  # Latin-1 bytes
    opts = options_for_fixture(FIXTURE, out, precisions=("fp32", "fp16", "int8"), calib_data=calib,
                               **{**FAST, "calib_images": 32})
    report = deploy(opts)
    reused = {s["step"]: s["reused"] for s in report["steps"]}
    assert reused["export fp32"] and reused["convert fp16"]
    assert not reused["quantize int8"]
    assert read_metadata(out / f"{FIXTURE}.int8.onnx")["pfdeploy.precision"] == "int8"


def test_int8_verdict_rests_on_real_images_when_given():
    from pfdeploy.deploy.pipeline import verify_summary

    ok = {"passed": True, "max_abs": 0.1, "max_rel": 0.02, "top1": 1.0, "top5": 1.0, "cosine": 0.999}
    bad = {"passed": False, "max_abs": 0.7, "max_rel": 0.3, "top1": 0.6, "top5": 1.0, "cosine": 0.97}
    result = {"sources": {"random": bad, "data": ok}}
    int8 = verify_summary(result, "int8")
    assert int8["passed"] and int8["judged_on"] == ["data"] and int8["failed_sources"] == ["random"]
    assert int8["max_abs"] == 0.1
    fp16 = verify_summary(result, "fp16")
    assert not fp16["passed"] and fp16["max_abs"] == 0.7 and fp16["top1_agreement"] == 0.6
    no_data = verify_summary({"sources": {"random": bad, "real-looking": ok}}, "int8")
    assert not no_data["passed"] and no_data["judged_on"] == ["random", "real-looking"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["r50_hybrid", "--precision", "fp32,fp8"], "unknown precision 'fp8'"),
        (["r50_hybrid", "--precision", "fp32,int8"], "needs calibration images"),
        (["r50_hybrid", "--calib-data", "no/such/dir"], "--calib-data no/such/dir is not a directory"),
        (["r50_hybrid", "--checkpoint", "missing.pth"], "--checkpoint missing.pth not found"),
        (["r50_hybrid", "--override", "base_width"], "KEY=VALUE"),
        (["no_such_model"], "no_such_model"),
        (["--fixture", FIXTURE, "--num-classes", "3"], "drop --num-classes"),
        (["--fixture", FIXTURE, "--int8-target", "cpu", "--engines", "yes"], "TensorRT does not compile"),
        ([], "needs a model NAME or --fixture"),
    ],
)
def test_bad_input_is_one_line_before_any_work(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["deploy", *args, "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pfdeploy: error:") and message in err[0], err
    assert not out.exists()


def test_failed_verification_exits_1_with_and_without_json(deployed, tmp_path, capsys):
    """INT8 calibrated on constant images fails verification: deploy says so and exits 1, also with --json."""
    from PIL import Image

    out, constant = tmp_path / "copy", tmp_path / "constant"
    shutil.copytree(deployed[0], out)  # export and fp16 are reused: only INT8 and what follows are redone
    constant.mkdir()
    for i in range(8):
        Image.new("L", (32, 32), 0).save(constant / f"{i}.png")
    args = ["deploy", "--fixture", FIXTURE, "--precision", "fp32,fp16,int8", "--out", str(out), *CLI_FAST,
            "--calib-data", str(constant), "--calib-images", "8"]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert f"verification FAILED for {FIXTURE}.int8.onnx" in captured.err and "report.md" in captured.out
    assert main([*args, "--json"]) == 1  # the same run (every step reused), reported as JSON
    captured = capsys.readouterr()
    passed = {a["label"]: a["verify"]["passed"] for a in json.loads(captured.out)["artifacts"]}
    assert passed[f"{FIXTURE}.fp32.onnx"] and passed[f"{FIXTURE}.fp16.onnx"]
    assert not passed[f"{FIXTURE}.int8.onnx"]
    assert f"verification FAILED for {FIXTURE}.int8.onnx" in captured.err


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["deploy", "r50_hybrid", "--out", str(target)]) == 1
    assert "is a file" in capsys.readouterr().err


@pytest.mark.skipif(_has_tensorrt(), reason="TensorRT is installed here")
def test_engines_yes_without_tensorrt_fails_before_work(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["deploy", "r50_hybrid", "--engines", "yes", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TensorRT" in err[0]
    assert not out.exists()


def test_interrupt_leaves_only_finished_artifacts(tmp_path, monkeypatch):
    """Ctrl-C in the middle (here: during the first verification) keeps finished steps, no partial files.

    Also the random-weights label and a uint8-NHWC graph (raw pixels in) through verify, bench, Triton.
    """
    import pfdeploy.runtime.verify as verify
    from pfdeploy.triton import spec_from_onnx

    opts = DeployOptions("r50_hybrid", tmp_path / "out", num_classes=4, precisions=("fp32", "fp16"),
                         input_format="uint8-nhwc",
                         overrides={"layers": [1, 1, 1, 1], "base_width": 8, "img_size": 32},
                         bench_batches=(1,), bench_seconds=0.05)
    real = verify.verify_artifact

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(verify, "verify_artifact", interrupted)
    with pytest.raises(KeyboardInterrupt):
        deploy(opts)
    names = sorted(p.name for p in opts.out.iterdir())
    assert names == [".pfdeploy-deploy-state.json", "r50_hybrid.fp16.onnx", "r50_hybrid.fp32.onnx"]
    for name in names[1:]:
        onnx.checker.check_model(str(opts.out / name), full_check=True)
    monkeypatch.setattr(verify, "verify_artifact", real)
    report = deploy(opts)
    reused = {s["step"]: s["reused"] for s in report["steps"]}
    assert reused["export fp32"] and reused["convert fp16"] and not reused["bench"]
    assert report["model"]["random_weights"] is True
    assert "RANDOM WEIGHTS" in (opts.out / "report.md").read_text()
    assert all(a["verify"]["passed"] for a in report["artifacts"])
    assert all(a["tensorrt_check"]["passed"] for a in report["artifacts"])  # raw bytes go into a Cast first
    spec = spec_from_onnx(opts.out / "r50_hybrid.fp16.onnx")
    assert [(t.dtype, t.shape) for t in spec.inputs] == [("TYPE_UINT8", (-1, 32, 32, 3))]


def test_triton_repository_from_deployed_artifacts(deployed, tmp_path, capsys):
    """The exporter's real graphs (fp32, fp16 with FP32 IO, int8 Q/DQ) become Triton models."""
    pb = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient ships Triton's schema")

    from pfdeploy.triton.validate import parse_model_config

    out, report = deployed
    files = [str(out / a["file"]) for a in report["artifacts"] if a["backend"] == "onnxruntime"]
    repo = tmp_path / "repo"
    assert main(["triton", *files, "--repo", str(repo), "--max-batch", "16", "--dynamic-batching",
                 "--instances", "2"]) == 0
    assert "tritonserver --model-repository" in capsys.readouterr().out
    for precision in ("fp32", "fp16", "int8"):
        name = f"{FIXTURE}_{precision}"
        config = parse_model_config((repo / name / "config.pbtxt").read_text())
        assert config.name == name and config.platform == "onnxruntime_onnx"
        assert config.max_batch_size == 16
        assert [(i.name, pb.DataType.Name(i.data_type), list(i.dims)) for i in config.input] == [
            ("input", "TYPE_FP32", [3, 32, 32])]
        assert [(o.name, pb.DataType.Name(o.data_type), list(o.dims)) for o in config.output] == [
            ("logits", "TYPE_FP32", [10])]
        assert list(config.dynamic_batching.preferred_batch_size) == [8, 16]
        assert config.instance_group[0].count == 2
        copied = repo / name / "1" / "model.onnx"
        assert sha256_file(copied) == sha256_file(out / f"{FIXTURE}.{precision}.onnx")


@pytest.mark.tensorrt
def test_engines_are_built_verified_benchmarked_and_served(tmp_path):
    """Needs TensorRT and a GPU: engines for every precision, in the report and in a Triton repository."""
    from pfdeploy.triton import repository_from_artifacts
    from pfdeploy.triton.validate import parse_model_config

    opts = options_for_fixture(FIXTURE, tmp_path / "out", precisions=("fp32", "fp16", "int8"), engines="yes",
                               engine_batch=(1, 4, 8), **FAST)
    report = deploy(opts)
    engines = [a for a in report["artifacts"] if a["format"] == "tensorrt"]
    assert [a["precision"] for a in engines] == ["fp32", "fp16", "int8"]
    assert report["engines"]["status"] == "built"
    for engine in engines:
        assert engine["verify"]["passed"], engine["verify"]
        assert any(b["mode"] == "device" for b in engine["bench"])
    models = repository_from_artifacts([opts.out / a["file"] for a in engines], tmp_path / "repo")
    for model in models:
        config = parse_model_config(model.config_path.read_text())
        assert config.platform == "tensorrt_plan" and config.max_batch_size == 8
        assert config.optimization.cuda.graphs


def test_tensorrt_check_failures_are_reported_and_the_cpu_graph_is_not_checked(tmp_path):
    """The report's TensorRT check: a violation is listed by node and rule and fails the run; the
    --int8-target cpu graph is for ONNX Runtime, so it is not checked."""
    from types import SimpleNamespace

    from pfdeploy.deploy.pipeline import trt_check_failures
    from pfdeploy.deploy.report import markdown_from_report
    from pfdeploy.deploy.steps import tensorrt_check

    assert tensorrt_check(SimpleNamespace(int8_target="cpu"), tmp_path / "m.int8-cpu.onnx", "int8")["checked"] is False
    bad = {"checked": True, "trt_version": "10.1", "source": "onnx-tensorrt docs", "passed": False,
           "violations": [{"node": "fc.bias_DequantizeLinear", "op_type": "DequantizeLinear", "rule": "dq-input",
                           "detail": "input 'fc.bias_quantized' is INT32"}]}
    artifact = {"file": "m.int8.onnx", "format": "onnx", "precision": "int8", "bytes": 10, "sha256": "0" * 64,
                "verify": {"passed": True}, "tensorrt_check": bad}
    report = {"model": {"label": "m", "name": "m", "random_weights": True}, "artifacts": [artifact],
              "options": {"precisions": ["int8"], "int8_target": "tensorrt"},
              "engines": {"status": "skipped", "note": "no TensorRT"}, "environment": {}, "source_fp32": "m.onnx",
              "created": "now", "steps": []}
    assert trt_check_failures(report) == ["m.int8.onnx: node 'fc.bias_DequantizeLinear' (DequantizeLinear) "
                                          "breaks dq-input (+0 more)"]
    md = markdown_from_report(report)
    assert "FAIL (1 violations)" in md and "`fc.bias_DequantizeLinear` (DequantizeLinear) breaks dq-input" in md


def test_non_finite_logits_fail_deploy_and_verify(tmp_path, capsys):
    """Finite weights whose logits overflow to Inf: every comparison with NaN/Inf is False, so no tolerance
    trips by itself; deploy and verify must still fail, saying which side is not finite."""
    import torch

    from pfdeploy.models import create_model

    overrides = {"layers": [1, 1, 1, 1], "base_width": 8, "img_size": 32}
    state = create_model("r50", num_classes=4, **overrides).state_dict()
    state["fc.weight"] = torch.full_like(state["fc.weight"], 3e38)  # finite, but any sum of features overflows
    ckpt = tmp_path / "overflow.pth"
    torch.save(state, ckpt)
    out = tmp_path / "out"
    args = ["deploy", "r50", "--checkpoint", str(ckpt), "--num-classes", "4", "--precision", "fp32",
            "--override", "layers=[1,1,1,1]", "--override", "base_width=8", "--override", "img_size=32",
            "--verify-samples", "2", "--bench-batch", "1", "--bench-seconds", "0.02", "--out", str(out)]
    assert main(args) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("pfdeploy: verification FAILED for r50.fp32.onnx: the PyTorch reference's logits are "
                           "not finite"), line
    report = json.loads((out / "report.json").read_text(), parse_constant=pytest.fail)  # strict JSON: no NaN
    verify = report["artifacts"][0]["verify"]
    assert not verify["passed"] and verify["max_abs"] is None
    assert main(["verify", str(out / "r50.fp32.onnx"), "--checkpoint", str(ckpt), "--samples", "2"]) == 1
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1].startswith("FAIL")
    assert captured.err.strip().startswith("pfdeploy: error: verification FAILED: the PyTorch reference's logits")
