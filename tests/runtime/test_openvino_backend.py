"""The openvino backend on small forms: same logits as ONNX Runtime and torch, inputs, batch, threads,
thread-safety, precision (fp32 really f32, bf16 refused or honoured), errors, and the auto rule."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
from export_helpers import assert_close

from pfdeploy.errors import MissingDependencyError, PfdeployError
from pfdeploy.runtime import AutoFacts, auto_facts, backend_for, load

ov = pytest.importorskip("openvino", reason="the openvino backend needs pip install 'pfdeploy[openvino]'")

from pfdeploy.runtime import openvino_backend  # noqa: E402 - after the importorskip
from pfdeploy.runtime.openvino_backend import compile_config, int8_layers, layer_precisions  # noqa: E402

FAMILIES = ["r50_hybrid", "vit_ti_max", "pit_ti_max"]  # one graph of each family (resnet, vit, pit)


@pytest.fixture(scope="module")
def r50h(cheap_onnx):
    with load(cheap_onnx("r50_hybrid"), backend="openvino") as session:
        yield session


@pytest.mark.parametrize("name", FAMILIES)
def test_openvino_gives_the_onnxruntime_and_torch_logits_in_f32(cheap_onnx, cheap_checkpoint, name):
    path = cheap_onnx(name)
    with load(path, backend="openvino") as ovs, load(path, backend="onnxruntime") as ort, \
            load(path, backend="torch", checkpoint=cheap_checkpoint(name)) as pt:
        assert ovs.backend == "openvino" and ovs.input_spec == ort.input_spec
        x = ovs.input_spec.example(3, seed=4)
        got = ovs(x)
        assert got.dtype == np.float32 and got.shape == (3, 10)
        ref = pt(x)
        assert np.ptp(ref) > 0.05  # distinct logits: not a degenerate comparison
        assert_close(ref, got)
        assert_close(ort(x), got)
        precisions = {p for (_, p) in layer_precisions(ovs.compiled_model)}
        assert not precisions & {"bf16", "f16"}, precisions  # the f32 hint holds on any CPU
        assert int8_layers(ovs.compiled_model)["int8"] == {}


def test_uint8_nhwc_graph_takes_raw_pixels(cheap_onnx):
    path = cheap_onnx("r50_hybrid", input_format="uint8-nhwc")
    with load(path, backend="openvino") as ovs, load(path, backend="onnxruntime") as ort:
        spec = ovs.input_spec
        assert (spec.dtype, spec.layout, spec.shape) == ("uint8", "NHWC", (None, 32, 32, 3))
        x = spec.example(2, seed=1)
        assert_close(ort(x), ovs(x))


def test_dynamic_batch_takes_any_size_and_matches_per_image(r50h):
    assert (r50h.input_spec.min_batch, r50h.input_spec.max_batch) == (1, None)
    assert r50h.compiled_model.inputs[0].get_partial_shape()[0].is_dynamic
    x = r50h.input_spec.example(5, seed=2)
    whole = r50h(x)
    for size in (1, 3):
        np.testing.assert_allclose(r50h(x[:size]), whole[:size], rtol=1e-5, atol=1e-6)


def test_fixed_batch_is_kept_and_enforced(cheap_onnx):
    with load(cheap_onnx("r50", batch=2), backend="openvino") as ovs:
        assert (ovs.input_spec.min_batch, ovs.input_spec.max_batch) == (2, 2)
        assert ovs(ovs.input_spec.example(2)).shape == (2, 10)
        with pytest.raises(PfdeployError, match="batch range 2..2"):
            ovs(ovs.input_spec.example(3))


def test_input_errors_are_one_line_and_torch_tensors_work(r50h):
    import torch

    with pytest.raises(PfdeployError, match="looks like NHWC"):
        r50h(np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(PfdeployError, match="astype"):
        r50h(np.zeros((1, 3, 32, 32), np.float64))
    x = r50h.input_spec.example(2, seed=3)
    np.testing.assert_array_equal(r50h(torch.from_numpy(x)), r50h(x))


def test_input_is_shared_not_copied_and_odd_arrays_still_run(r50h):
    x = r50h.input_spec.example(2, seed=5)
    ref = r50h(x)
    request = r50h._requests.get()  # the request that just ran (the pool holds one)
    try:
        assert np.shares_memory(request.get_input_tensor().data, x)  # zero copy
    finally:
        r50h._requests.put(request)
    frozen = x.copy()
    frozen.flags.writeable = False  # OpenVINO cannot share read-only memory: copied once
    strided = np.asfortranarray(x)
    np.testing.assert_array_equal(r50h(frozen), ref)
    np.testing.assert_array_equal(r50h(strided), ref)


def test_metadata_and_describe(r50h):
    assert r50h.metadata["pfdeploy.model"] == "r50_hybrid"
    assert r50h.precision == "fp32" and r50h.preprocess.size == 32
    info = r50h.describe()
    assert (info["backend"], info["device"], info["precision"]) == ("openvino", "cpu", "fp32")


def test_threads_follow_the_option_and_default_to_the_cores(cheap_onnx, r50h):
    from pfdeploy.runtime.ort_options import physical_cores

    assert int(r50h.compiled_model.get_property("INFERENCE_NUM_THREADS")) == physical_cores()
    assert str(r50h.compiled_model.get_property("PERFORMANCE_HINT")).endswith("LATENCY")
    with load(cheap_onnx("r50_hybrid"), backend="openvino", intra_op_threads=1) as one:
        assert int(one.compiled_model.get_property("INFERENCE_NUM_THREADS")) == 1
        x = one.input_spec.example(2)
        np.testing.assert_allclose(one(x), r50h(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(PfdeployError, match="positive integer"):
        load(cheap_onnx("r50_hybrid"), backend="openvino", intra_op_threads=0)


def test_concurrent_calls_give_the_serial_results(r50h):
    inputs = [r50h.input_spec.example(1 + i % 3, seed=i) for i in range(12)]
    serial = [r50h(x) for x in inputs]
    results: dict[int, np.ndarray] = {}
    errors = []

    def worker(first: int) -> None:
        try:
            for i in range(first, len(inputs), 4):
                results[i] = r50h(inputs[i])
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, want in enumerate(serial):
        np.testing.assert_array_equal(results[i], want)


@pytest.mark.parametrize("cpu", ["avx2", "avx512-vnni"])
def test_bf16_is_refused_without_avx512_bf16_or_amx(cheap_onnx, cpu_features, cpu):
    cpu_features(cpu)
    with pytest.raises(PfdeployError, match="AVX512-BF16 or AMX") as info:
        load(cheap_onnx("r50_hybrid"), backend="openvino", precision="bf16")
    assert "\n" not in str(info.value) and f"[faked: {cpu}]" in str(info.value)


@pytest.mark.parametrize("cpu", ["avx512-bf16", "amx"])
def test_bf16_sets_the_hint_and_is_judged_with_the_bf16_row(cheap_onnx, cheap_checkpoint, cpu_features, cpu):
    """On a BF16 CPU (real, or faked with the f32 stand-in where this one has no BF16: tests/cpu_facts.py) the
    session asks OpenVINO for bf16 and is verified as bf16. Only real BF16 hardware shows the compiled hint and
    BF16 rounding; test_bf16_row_accepts_bfloat16_rounding_of_the_trained_fixture covers the row's width."""
    from cpu_facts import REAL_BF16

    from pfdeploy.runtime.verify import compare_logits

    cpu_features(cpu)
    config = compile_config("bf16", 2)
    assert config == {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 2}
    assert compile_config()["INFERENCE_PRECISION_HINT"] == "f32"  # fp32 is explicit, never OpenVINO's default
    with load(cheap_onnx("r50_hybrid"), backend="openvino", precision="bf16") as bf16, \
            load(cheap_onnx("r50_hybrid"), backend="torch", checkpoint=cheap_checkpoint("r50_hybrid")) as pt:
        assert (bf16.precision, bf16.compute_precision, bf16.config["INFERENCE_PRECISION_HINT"]) == (
            "bf16", "bf16", "bf16")
        hint = bf16.compiled_model.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        assert hint == ("bf16" if REAL_BF16 else "f32")  # f32: the stand-in
        x = bf16.input_spec.example(8, seed=0)
        assert compare_logits(pt(x), bf16(x), "bf16")["passed"]


class _Compiled:
    """What openvino.CompiledModel.get_property answers, for the check of what OpenVINO honoured."""

    def __init__(self, hint: str, threads: int):
        self.answers = {"INFERENCE_PRECISION_HINT": ov.Type.bf16 if hint == "bf16" else ov.Type.f32,
                        "INFERENCE_NUM_THREADS": threads}

    def get_property(self, key):
        return self.answers[key]


def test_a_precision_openvino_did_not_honour_is_an_error(cheap_onnx, cpu_features, monkeypatch, tmp_path):
    """OpenVINO silently computes f32 where bf16 was asked and the CPU cannot do it: pfdeploy refuses rather than
    label f32 results bf16. The check reads what the compiled model reports; where this CPU has no BF16 it is
    also shown against real OpenVINO."""
    from cpu_facts import REAL_BF16

    from pfdeploy.runtime.openvino_backend import _check_honoured

    bf16 = {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": 2}
    with pytest.raises(PfdeployError, match="inference precision f32, not bf16"):
        _check_honoured(_Compiled("f32", 2), bf16, tmp_path / "m.onnx")
    _check_honoured(_Compiled("bf16", 1), bf16, tmp_path / "m.onnx")  # fewer threads than asked: logged only
    if not REAL_BF16:  # pfdeploy._cpu says BF16, the hardware and OpenVINO do not
        cpu_features("avx512-bf16")
        real = getattr(openvino_backend.compiled_for_cpu, "real", openvino_backend.compiled_for_cpu)
        monkeypatch.setattr(openvino_backend, "compiled_for_cpu", real)  # without the stand-in
        with pytest.raises(PfdeployError, match="not bf16"):
            load(cheap_onnx("r50_hybrid"), backend="openvino", precision="bf16")


@pytest.mark.parametrize("kwargs,message", [
    ({"precision": "fp16"}, "precision 'fp16'"),
    ({"device": "cuda"}, "runs on the CPU"),
    ({"providers": ["CPUExecutionProvider"]}, "unknown option"),
])
def test_bad_options_are_one_line(cheap_onnx, kwargs, message):
    with pytest.raises(PfdeployError, match=message) as info:
        load(cheap_onnx("r50_hybrid"), backend="openvino", **kwargs)
    assert "\n" not in str(info.value)


def test_bad_files_get_the_onnx_loader_line(tmp_path, cheap_onnx):
    with pytest.raises(PfdeployError, match="not found"):
        load(tmp_path / "missing.onnx", backend="openvino")
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(cheap_onnx("r50_hybrid").read_bytes()[:5000])
    with pytest.raises(PfdeployError, match="truncated|damaged"):
        load(truncated, backend="openvino")
    with pytest.raises(PfdeployError, match="runs .onnx files"):
        load(tmp_path / "m.plan", backend="openvino")


def test_missing_openvino_names_the_extra(cheap_onnx, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'pfdeploy\[openvino\]'") as info:
        load(cheap_onnx("r50_hybrid"), backend="openvino")
    assert info.value.exit_code == 2
    assert openvino_backend.INSTALL in str(info.value)


# --- backend="auto" ----------------------------------------------------------------------------


@pytest.mark.parametrize("facts,want", [
    (AutoFacts(), "onnxruntime"),
    (AutoFacts(precision="fp32", family="resnet", openvino=True, vnni=True), "onnxruntime"),
    (AutoFacts(precision="fp16", family="vit", openvino=True, vnni=True), "onnxruntime"),
    (AutoFacts(precision="int8", family="resnet", openvino=True, vnni=False), "openvino"),
    (AutoFacts(precision="int8", family="vit", openvino=True, vnni=False), "onnxruntime"),
    (AutoFacts(precision="int8", family="pit", openvino=True, vnni=False), "onnxruntime"),
    (AutoFacts(precision="int8", family="vit", openvino=True, vnni=True), "openvino"),
    (AutoFacts(precision="int8", family=None, openvino=True, vnni=True), "openvino"),
    (AutoFacts(precision="int8", family="resnet", openvino=False, vnni=True), "onnxruntime"),
    (AutoFacts(precision="int8", family="resnet", openvino=True, vnni=True, device="cuda"), "onnxruntime"),
    (AutoFacts(precision="fp32", openvino=True, bf16=True), "openvino"),
])
def test_auto_rule(facts, want):
    assert backend_for("m.onnx", facts) == want
    assert backend_for("m.plan", facts) == "tensorrt" and backend_for("r50", facts) == "torch"


@pytest.mark.parametrize("cpu, vnni", [("avx2", False), ("avx512-vnni", True), ("amx", True)])
def test_auto_facts_read_the_artifact_and_the_machine(cheap_onnx, cpu_features, tmp_path, cpu, vnni):
    """The VNNI rule on each CPU kind: a ViT's INT8 graph goes to OpenVINO only where the CPU has VNNI."""
    import onnx

    cpu_features(cpu)
    facts = auto_facts(cheap_onnx("vit_ti_max"))
    assert (facts.precision, facts.family, facts.openvino, facts.vnni) == ("fp32", "vit", True, vnni)
    assert auto_facts(cheap_onnx("r50"), options={"precision": "bf16"}).bf16
    int8 = onnx.load(str(cheap_onnx("vit_ti_max")))
    next(p for p in int8.metadata_props if p.key == "pfdeploy.precision").value = "int8"
    onnx.save(int8, str(tmp_path / "vit.int8.onnx"))
    assert backend_for(tmp_path / "vit.int8.onnx", auto_facts(tmp_path / "vit.int8.onnx")) == (
        "openvino" if vnni else "onnxruntime")
    cpu_features("avx512-vnni")  # no BF16
    with pytest.raises(PfdeployError, match="AVX512-BF16"):  # auto -> openvino, which refuses it here
        load(cheap_onnx("r50"), precision="bf16")
    with pytest.raises(PfdeployError, match="runs the artifact's own precision"):
        load(cheap_onnx("r50"), precision="fp32")  # fp32 graph -> onnxruntime, which has no precision option


# --- CLI: bench / predict / eval / verify -----------------------------------------------------


def test_cli_bench_eval_predict_take_the_openvino_backend(cheap_onnx, tmp_path, capsys):
    import json

    from pfdeploy.calibration.fixtures import get_fixture
    from pfdeploy.cli import main

    path = str(cheap_onnx("r50_hybrid"))
    out = tmp_path / "b.json"
    assert main(["bench", path, "--backend", "openvino", "--batch", "2", "--seconds", "0.05", "--warmup", "1",
                 "--json", str(out)]) == 0
    target = json.loads(out.read_text())["targets"][0]
    assert (target["backend"], target["precision"]) == ("openvino", "fp32")
    val = get_fixture("r50_hybrid_digits").val_dir
    capsys.readouterr()
    assert main(["eval", path, "--data", str(val), "--limit", "20", "--backend", "openvino", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["backend"], report["images"]) == ("openvino", 20)
    image = sorted((val / "4").glob("*.png"))[0]
    assert main(["predict", str(image), "--model", path, "--backend", "openvino", "--precision", "fp32"]) == 0
    assert capsys.readouterr().out.startswith(str(image))


@pytest.mark.parametrize("argv,message", [
    (["--backend", "onnxruntime", "--precision", "fp32"], "runs the artifact's own precision"),
    (["--backend", "torch", "--precision", "bf16"], "not one the torch backend computes"),
    (["--backend", "openvino", "--precision", "fp16"], "not one the openvino backend computes"),
    (["--backend", "openvino", "--precision", "bf16"], "AVX512-BF16 or AMX"),
])
def test_cli_precision_is_validated_per_backend(cheap_onnx, cpu_features, capsys, argv, message):
    from pfdeploy.cli import main

    cpu_features("avx2")
    assert main(["bench", str(cheap_onnx("r50_hybrid")), "--batch", "1", "--seconds", "0.05", *argv]) != 0
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_verify_with_openvino(cheap_onnx, cheap_checkpoint, tmp_path, cpu_features, capsys):
    import json

    from pfdeploy.cli import main

    path, ckpt = str(cheap_onnx("r50_hybrid")), str(cheap_checkpoint("r50_hybrid"))
    out = tmp_path / "v.json"
    assert main(["verify", path, "--checkpoint", ckpt, "--samples", "4", "--backend", "openvino",
                 "--json", str(out)]) == 0
    assert "run by openvino" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert (report["backend"], report["precision"], report["passed"]) == ("openvino", "fp32", True)
    assert main(["verify", path, "--checkpoint", ckpt, "--precision", "bf16"]) == 1  # onnxruntime has no bf16
    assert "needs backend openvino" in capsys.readouterr().err
    cpu_features("avx512-vnni")
    assert main(["verify", path, "--checkpoint", ckpt, "--backend", "openvino", "--precision", "bf16"]) == 1
    assert "AVX512-BF16 or AMX" in capsys.readouterr().err


def test_verify_judges_bf16_with_its_own_row():
    from pfdeploy.runtime.verify import TOLERANCES, verified_precision

    assert verified_precision("fp32", "bf16") == verified_precision("fp16", "bf16") == "bf16"
    assert verified_precision("int8", "bf16") == "int8" and verified_precision("fp32", None) == "fp32"
    fp16, bf16 = TOLERANCES["fp16"], TOLERANCES["bf16"]
    assert bf16["max_rel"] > fp16["max_rel"] and bf16["cosine"] < fp16["cosine"]  # 8 mantissa bits, not 11


def test_bf16_row_accepts_bfloat16_rounding_of_the_trained_fixture():
    """What the bf16 row rests on (scripts/bf16_error.py): the fixture run entirely in bfloat16 passes it,
    and the same logits would fail the fp32 row (so the comparison sees the rounding)."""
    import copy

    import torch

    from pfdeploy.calibration.fixtures import get_fixture, load_fixture
    from pfdeploy.calibration.preprocess import normalize_uint8
    from pfdeploy.runtime.verify import compare_logits, folder_images

    model, pre = load_fixture("r50_hybrid_digits")
    x = torch.from_numpy(normalize_uint8(folder_images(get_fixture("r50_hybrid_digits").val_dir, pre, 32), pre))
    with torch.no_grad():
        ref = model.eval()(x).numpy()
        got = copy.deepcopy(model).to(torch.bfloat16)(x.to(torch.bfloat16)).float().numpy()
    assert compare_logits(ref, got, "bf16")["passed"]
    assert not compare_logits(ref, got, "fp32")["passed"]
