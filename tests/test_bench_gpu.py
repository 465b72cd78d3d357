"""benchmarks/bench_gpu.py's orchestration without a GPU: the budget, the job order, and a whole run over real
CPU sessions in which one path fails, one computes wrong numbers and one does not fit the budget, so that
the others' numbers are still measured and written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from export_helpers import tiny

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_gpu  # noqa: E402

from pfdeploy.runtime.torch_backend import TorchSession, metadata_for_model  # noqa: E402


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_budget_shares_follow_the_weights_and_roll_over():
    clock = Clock()
    budget = bench_gpu.Budget(100.0, [("fp16", 256), ("fp16", 1)], clock=clock)
    assert budget.start_group(("fp16", 256)) == pytest.approx(100 * 5.5 / 7.0)
    clock.now = 10.0  # the headline group used 10 s of its ~79
    assert budget.start_group(("fp16", 1)) == pytest.approx(90.0)  # the last group gets all that is left
    assert budget.estimate("compiled", "max-autotune") == 60.0 and budget.estimate("pt2", "default") == 30.0
    budget.record("compiled", "max-autotune", 20.0)
    assert budget.estimate("compiled", "max-autotune") == 20.0
    assert budget.fits("compiled", "max-autotune", reserve=65.0) and not budget.fits("pt2", "default", 65.0)
    assert bench_gpu.timing_reserve(10, 0.5) == pytest.approx(18.0)


def test_jobs_open_cheap_paths_first_then_the_resnets_compiles():
    order = bench_gpu.job_order(bench_gpu.MODELS, bench_gpu.PATHS)
    assert order[:10] == [(p, m) for p in ("eager_cg", "folded") for m in bench_gpu.MODELS]
    assert order[10:14] == [("compiled", "r50"), ("compiled", "r50_max"), ("compiled", "r50_hybrid"),
                            ("fused", "r50")]
    assert order[-1] == ("pt2", "pit_s_max")
    assert bench_gpu.group_compile_mode(("fp16", 256), "max-autotune", "reduce-overhead") == "max-autotune"
    assert bench_gpu.group_compile_mode(("fp32", 1), "max-autotune", "reduce-overhead") == "reduce-overhead"


def test_settings_refuse_what_the_benchmark_does_not_measure():
    assert bench_gpu.settings_for(quick=True).models == ("r50", "r50_max", "r50_hybrid")
    with pytest.raises(ValueError, match="unknown path tensorrt"):
        bench_gpu.settings_for(paths=["eager_cg", "tensorrt"])
    with pytest.raises(ValueError, match="unknown model"):
        bench_gpu.settings_for(models=["r51"])


def _tiny(name: str, seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        from pfdeploy.models import create_model

        return create_model(name, num_classes=10, **tiny(name)).eval()


def cpu_opener(model, path, precision, batch, compile_mode, workdir):
    """Real CPU torch sessions standing in for the CUDA paths; "compiled" fails to open (a compiler crash) and
    "pt2" computes another model's numbers (so verification must fail it)."""
    if path == "compiled":
        raise RuntimeError("inductor crashed\nlong traceback")
    net = _tiny(model, seed=1 if path == "pt2" else 0)
    meta = metadata_for_model(net, input_format="float-nchw", precision="fp32", checkpoint_sha256="random")
    return TorchSession(net, metadata=meta, fold_bn=path != "eager_cg")


def test_a_run_keeps_every_path_that_worked(tmp_path):
    settings = bench_gpu.settings_for(models=["r50", "r50_max"], precisions=["fp16"], batches=[2], seconds=0.02,
                                      budget=600.0, samples=1, paths=["eager_cg", "compiled", "fused", "pt2"])
    written = []
    env = {"gpu": "CPU stand-in", "compute_capability": "-", "gpu_memory_gib": 0, "driver": None, "torch": "",
           "torch_cuda": None, "cudnn": None, "triton": None, "cuda_bindings": None, "python": ""}
    result = bench_gpu.new_result(settings, "pytest", environment=env)
    result = bench_gpu.run_benchmark(settings, result=result, say=lambda text: None, opener=cpu_opener,
                                     reference=lambda name: _tiny(name, seed=0),
                                     on_progress=lambda r: written.append(json.loads(json.dumps(r))))
    status = {(p["model"], p["path"]): (p["status"], p["reason"]) for p in result["paths"]}
    assert status[("r50", "eager_cg")] == ("ok", None) and status[("r50_max", "eager_cg")] == ("ok", None)
    assert status[("r50", "compiled")] == ("failed", "RuntimeError: inductor crashed")
    assert status[("r50_max", "pt2")][0] == "unverified" and status[("r50_max", "pt2")][1].startswith("verification")
    assert status[("r50", "fused")] == ("skipped", "no PF layer to fuse (its fused path is its compiled path)")
    assert status[("r50_max", "fused")][0] == "skipped"  # no Triton or no GPU here: its reason says which
    measured = {(r["model"], r["path"]): r["verified"] for r in result["rows"]}
    assert measured == {("r50", "eager_cg"): True, ("r50_max", "eager_cg"): True, ("r50", "pt2"): False,
                        ("r50_max", "pt2"): False}
    fastest = {f["model"]: f["path"] for f in result["fastest"]}
    assert fastest.keys() == {"r50", "r50_max"} and "pt2" not in fastest.values()  # wrong numbers never win
    assert result["status"] == "complete" and written[-1]["rows"] == result["rows"]
    # written after every job, not only after the group's timing: a kill mid-group keeps the paths seen so far
    assert [len(w["paths"]) for w in written[:4]] == [1, 2, 3, 4] and not written[0]["rows"]
    assert "profile" in result and set(result["profile"]) <= {"r50|before", "r50|after", "r50_max|before",
                                                              "r50_max|after"}
    bench_gpu.write_result(result, tmp_path / "g.json", tmp_path / "g.md")
    assert "| r50 | compiled | fp16 | 2 | failed |" in (tmp_path / "g.md").read_text()


def test_compiles_that_do_not_fit_are_skipped_with_the_reason():
    budget = bench_gpu.Budget(30.0, [("fp16", 2)])
    budget.start_group(("fp16", 2))
    sessions, results = bench_gpu.open_group(["r50"], ["folded", "pt2"], "fp16", 2, budget=budget,
                                             compile_mode="max-autotune", workdir=Path("."), opener=cpu_opener,
                                             references={"r50": _tiny("r50")}, samples=2, seconds=0.1, triton=None,
                                             say=lambda text: None)
    assert [label for label, _ in sessions] == ["r50|folded"]
    skipped = results[-1]
    assert skipped.status == "skipped" and skipped.reason.startswith("time budget") and "max-autotune" in skipped.reason
    for _, session in sessions:
        session.close()


def test_kernel_names_fall_into_kinds():
    kind = bench_gpu.kernel_kind
    assert kind("triton_poi_fused_convolution_max_pool2d_with_indices_relu_3") == "max-pool"
    assert kind("pool_gemm_kernel") == "pfdeploy fused pool+1x1"
    assert kind("sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize128x128x64") \
        == "convolution / matmul"
    assert kind("void at::native::vectorized_elementwise_kernel<4, at::native::(anonymous)::launch_clamp_scalar>") \
        == "elementwise (bias, ReLU, GELU, add)"
    assert kind("cudnn::bn_fw_inf_1C11_kernel_NCHW") == "BatchNorm"  # cuDNN's BatchNorm is not a convolution
    assert kind("void at::native::batch_norm_transform_input_kernel") == "BatchNorm"
    assert kind("cudnn_infer_ampere_scudnn_128x64_relu_small_nn_v1") == "convolution / matmul"
    summary = bench_gpu.kinds_from_events([("pool_gemm_kernel", 3000.0), ("triton_red_fused_mean_0", 1000.0)], 2)
    assert summary["ms_per_iteration"] == {"pfdeploy fused pool+1x1": 1.5, "reduction / norm": 0.5}
    assert summary["total_ms"] == 2.0 and summary["kernels_per_iteration"] == 1.0


def test_each_torch_path_is_the_plan_it_names_on_cuda():
    from pfdeploy.runtime.torch_backend import inference_plan

    def plan(path, mode="max-autotune", family="resnet"):
        options = {k: v for k, v in bench_gpu.torch_options(path, mode).items()}
        return inference_plan(family=family, device_type="cuda", **options).to_dict()

    assert plan("eager_cg") == {"fold_bn": False, "channels_last": True, "compile_mode": None, "cuda_graph": True,
                                "fused": False}
    assert plan("folded")["fold_bn"] and plan("folded")["cuda_graph"]
    assert plan("compiled") == {"fold_bn": True, "channels_last": True, "compile_mode": "max-autotune",
                                "cuda_graph": False, "fused": False}  # Inductor's CUDA graphs
    assert plan("compiled", "default")["cuda_graph"]  # no graphs of Inductor's own: the session's
    assert plan("fused", family="vit") == {"fold_bn": True, "channels_last": False, "compile_mode": "max-autotune",
                                           "cuda_graph": False, "fused": True}


def test_the_fused_canary_is_valid_python():
    compile(bench_gpu.CANARY, "fused canary", "exec")  # it runs only on a GPU, in a child process


def test_seeded_models_are_the_same_on_every_call():
    """The reference and every session of a model must get the same weights, whatever torch's global RNG."""
    torch.manual_seed(1)
    first = bench_gpu.seeded_model("r50_hybrid")
    if hasattr(bench_gpu, "_seeded_master"):
        bench_gpu._seeded_master.cache_clear()  # built again from scratch, not copied from the cache
    torch.manual_seed(2)
    rng = torch.random.get_rng_state()
    second = bench_gpu.seeded_model("r50_hybrid")
    assert torch.equal(torch.random.get_rng_state(), rng)  # the caller's RNG is left alone
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    second.half()  # a session converting its model does not change the next one's
    third = bench_gpu.seeded_model("r50_hybrid")
    assert all(torch.equal(a[k], v) for k, v in third.state_dict().items())


def test_the_headline_group_has_a_floor_and_compiles_fall_back_to_a_cheap_mode():
    clock = Clock()
    budget = bench_gpu.Budget(300.0, [("fp16", 256), ("fp32", 256), ("fp16", 1), ("fp32", 1), "more"], clock=clock)
    assert budget.start_group(("fp16", 256), floor=200.0) == pytest.approx(200.0)  # its weight alone: 150
    clock.now = 290.0
    assert budget.start_group(("fp32", 256)) == pytest.approx(10.0 * 2.0 / 5.5)  # no floor: its share
    assert budget.start_group(("fp16", 1), floor=200.0) == pytest.approx(10.0)  # a floor: all that is left
    budget = bench_gpu.Budget(100.0, [("fp16", 256)], clock=Clock())
    budget.start_group(("fp16", 256))
    assert budget.mode_that_fits("compiled", "max-autotune", reserve=20.0) == "max-autotune"
    budget.record("compiled", "max-autotune", 150.0)  # r50's autotuning took 150 s: the next falls back
    assert budget.mode_that_fits("compiled", "max-autotune", reserve=20.0) == "reduce-overhead"
    assert budget.mode_that_fits("compiled", "max-autotune", reserve=80.0) is None


def test_the_default_run_measures_the_headline_first_and_the_transformers_and_pt2_last():
    phases = bench_gpu.plan_phases(bench_gpu.settings_for())
    assert [p.key for p in phases] == ["fp16|b256", "fp16|b1", "fp32|b256", "fp32|b1", "fp16|b256|more"]
    head = phases[0]
    assert head.progressive and head.floor == bench_gpu.HEADLINE_FLOOR and head.compile_mode == "headline"
    assert head.jobs[:6] == [("eager_cg", "r50"), ("eager_cg", "r50_max"), ("eager_cg", "r50_hybrid"),
                             ("compiled", "r50"), ("fused", "r50_max"), ("fused", "r50_hybrid")]
    assert {m for _, m in head.jobs} == {"r50", "r50_max", "r50_hybrid"}
    assert all(path != "pt2" for path, _ in head.jobs) and len(head.jobs) == 11
    more = phases[-1]
    assert more.jobs[0] == ("eager_cg", "r50") and more.compile_mode == "rest"  # the anchor of its ratios
    assert {m for _, m in more.jobs[1:]} == {"vit_s_max", "pit_s_max", "r50", "r50_max", "r50_hybrid"}
    assert [j for j in more.jobs if j[0] == "pt2"] == [("pt2", m) for m in bench_gpu.MODELS]
    assert all(m in ("vit_s_max", "pit_s_max") for p, m in more.jobs[1:] if p != "pt2")
    quick = bench_gpu.plan_phases(bench_gpu.settings_for(quick=True))
    assert [p.key for p in quick] == ["fp16|b256", "fp16|b1", "fp16|b256|more"]
    assert quick[-1].jobs == [("eager_cg", "r50")] + [("pt2", m) for m in ("r50", "r50_max", "r50_hybrid")]
    alone = bench_gpu.plan_phases(bench_gpu.settings_for(models=["vit_s_max"], precisions=["fp16"], batches=[256]))
    assert [(p.key, p.progressive) for p in alone] == [("fp16|b256", True)]
    no_fused = bench_gpu.headline_jobs(["r50", "r50_max"], ["eager_cg", "compiled"])
    assert no_fused == [("eager_cg", "r50"), ("eager_cg", "r50_max"), ("compiled", "r50"), ("compiled", "r50_max")]


def test_a_later_phase_keeps_the_headline_rows():
    def row(model, path, rate, phase=None):
        out = {"model": model, "path": path, "precision": "fp16", "batch": 256, "mode": "device",
               "images_per_second": rate}
        return {**out, "phase": phase} if phase else out

    rows = bench_gpu.merge_rows([], "h", [row("r50", "eager_cg", 1.0)])
    rows = bench_gpu.merge_rows(rows, "h", [row("r50", "eager_cg", 2.0), row("r50", "compiled", 3.0)])
    assert rows == [row("r50", "eager_cg", 2.0, "h"), row("r50", "compiled", 3.0, "h")]  # provisional replaced
    rows = bench_gpu.merge_rows(rows, "more", [row("r50", "eager_cg", 9.0), row("vit_s_max", "compiled", 4.0)])
    assert rows[:2] == [row("r50", "eager_cg", 2.0, "h"), row("r50", "compiled", 3.0, "h")]
    assert rows[2:] == [row("vit_s_max", "compiled", 4.0, "more")]


def working_opener(model, path, precision, batch, compile_mode, workdir):
    net = _tiny(model)
    meta = metadata_for_model(net, input_format="float-nchw", precision="fp32", checkpoint_sha256="random")
    return TorchSession(net, metadata=meta, fold_bn=path != "eager_cg")


def test_the_headline_phase_is_timed_after_each_compile_so_a_kill_keeps_numbers(monkeypatch):
    monkeypatch.setattr(bench_gpu, "HEADLINE", ("fp16", 2))  # a small batch stands in for 256 on the CPU
    settings = bench_gpu.settings_for(models=["r50", "r50_max"], precisions=["fp16"], batches=[2], seconds=0.02,
                                      budget=600.0, samples=1, paths=["eager_cg", "compiled"])
    written = []
    env = {"gpu": "CPU stand-in", "compute_capability": "-", "gpu_memory_gib": 0, "driver": None, "torch": "",
           "torch_cuda": None, "cudnn": None, "triton": None, "cuda_bindings": None, "python": ""}
    result = bench_gpu.run_benchmark(settings, result=bench_gpu.new_result(settings, "pytest", environment=env),
                                     say=lambda text: None, opener=working_opener,
                                     reference=lambda name: _tiny(name, seed=0),
                                     on_progress=lambda r: written.append(json.loads(json.dumps(r))))
    after_r50 = next(w for w in written if any(p["path"] == "compiled" and p["model"] == "r50" for p in w["paths"]))
    timed = {(r["model"], r["path"]) for r in after_r50["rows"]}
    assert timed == {("r50", "eager_cg"), ("r50_max", "eager_cg"), ("r50", "compiled")}  # before r50_max compiles
    assert after_r50["criteria"] and after_r50["fastest"]
    assert {(r["model"], r["path"]) for r in result["rows"]} == timed | {("r50_max", "compiled")}
    assert {r["phase"] for r in result["rows"]} == {"fp16|b2"} and result["status"] == "complete"


def test_pt2_is_skipped_with_the_toolchain_reason():
    assert bench_gpu.path_problem("r50", "pt2", None, "no nvcc here") == "no nvcc here"
    assert bench_gpu.path_problem("r50", "eager_cg", None, "no nvcc here") is None
