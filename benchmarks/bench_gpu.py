"""GPU benchmark: every pfdeploy GPU path of the PF models and ResNet-50, measured side by side.

Paths (PATHS), each a torch-backend or pt2 session on CUDA:
  eager_cg  eager PyTorch, channels-last, CUDA graphs, BatchNorm NOT folded (the path measured before issue 18)
  folded    eager, BatchNorm folded into the convolutions, channels-last, CUDA graphs
  compiled  folded + torch.compile (Inductor with its CUDA graphs: max-autotune for FP16 batch 256, the
            criterion; reduce-overhead for the other groups, to fit the budget; --compile-mode for all)
  fused     compiled + the PF layers through pfdeploy's Triton kernel (models with a fusable PF layer only)
  pt2       folded, exported and AOTInductor-compiled into a fixed-batch .pt2 package, CUDA graphs
The five headline models (r50, r50_max, r50_hybrid, vit_s_max, pit_s_max) at 224x224 with seeded random
weights, every weight and BatchNorm statistic perturbed (speed does not depend on them; verification
does), FP16 and FP32 (TF32 off), batch 256 and 1. For each (precision, batch) every model and path is
timed in ONE `pfdeploy.runtime.bench.benchmark` run,
interleaved round by round, end to end (host array in, host logits out) and device-only. Before it
is timed, every session is compiled at that batch and verified (`pfdeploy.runtime.verify.verify_session`,
the precision's tolerance row) against the unprepared FP32 model on the GPU (TF32 off).

Robust by construction: a path that fails to open or compile is recorded with its reason and left out,
the others are measured; a path that fails verification is timed but marked and never counted as a
model's fastest path. The run goes in phases (`plan_phases`): first the headline, FP16 batch 256 of r50,
r50_max and r50_hybrid (eager_cg, r50's compiled path, the PF models' fused paths, then their compiled and
folded paths), with a guaranteed floor of the hard time budget (`--budget`) and a provisional interleaved
timing after each of its compiled sessions; then the other (precision, batch) groups; last, if time
remains, the transformers and the pt2 packages at FP16 batch 256. A compile that would not fit its
phase's time left runs in reduce-overhead instead, or is skipped with that reason. The result files are
rewritten after every session and every timing, so a run stopped from outside keeps what it measured.
The fused kernel's canary runs per precision (a failing FP32 kernel does not disable FP16's fused path);
pt2 is skipped with the reason when AOTInductor has no CUDA toolkit or C++ compiler.
After the headline phase, torch.profiler splits the device time of r50 and r50_max by kernel kind,
before (eager_cg) and after (each one's fastest path).

    python3 benchmarks/bench_gpu.py --json docs/gpu-check.json --markdown docs/gpu-check.md [--quick]
    # or `make gpu-check`, which runs the GPU tests first (scripts/gpu_check.py)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODELS = ("r50", "r50_max", "r50_hybrid", "vit_s_max", "pit_s_max")
PRECISIONS = ("fp16", "fp32")  # FP16 first: the headline
BATCHES = (256, 1)
PATHS = ("eager_cg", "folded", "compiled", "fused", "pt2")
COMPILING_PATHS = ("compiled", "fused", "pt2")
BASELINE, BASELINE_PATH = "r50", "eager_cg"
PAPER_SPEEDUP = {"r50_max": 8.7 / 6.8, "r50_hybrid": 8.7 / 7.3}  # GPU speed-ups over R50 in the paper
#: The models with a PF layer pfdeploy.kernels fuses (r50 has none: its fused path would be its compiled one).
FUSABLE = ("r50_max", "r50_hybrid", "vit_s_max", "pit_s_max")
QUICK = {"models": ("r50", "r50_max", "r50_hybrid"), "precisions": ("fp16",), "batches": (256, 1),
         "seconds": 0.3, "budget": 225.0}
HEADLINE = ("fp16", 256)  # issue 18's criterion: FP16, batch 256, device-only
#: The models of the headline phase (issue 18's done-when: r50, r50_max, r50_hybrid). The transformers and the
#: pt2 packages at FP16 batch 256 come in a last phase ("fp16|b256|more"), if time remains.
HEADLINE_MODELS = ("r50", "r50_max", "r50_hybrid")
#: Share of the time budget each phase may use; what a phase leaves goes to the next.
GROUP_WEIGHT = {("fp16", 256): 5.5, ("fp32", 256): 2.0, ("fp16", 1): 1.5, ("fp32", 1): 1.0, "more": 1.0}
#: The headline phase gets at least this many seconds (or all that is left, if less), whatever its weight gives.
HEADLINE_FLOOR = 200.0
#: Seconds of each provisional interleaved timing of the headline phase (after each of its compiled sessions).
PROVISIONAL_SECONDS = 0.25
#: A cheap compile mode to fall back on when the asked one (max-autotune) would not fit the phase's time left.
FALLBACK_MODE = "reduce-overhead"
#: Seconds to wait for the fused kernel's canary (per precision; it compiles the kernel's autotuning configs).
CANARY_SECONDS = 90.0
#: First guesses of one compile (s) before one has been seen in this run (deliberately low, so that the first
#: compile of each kind is tried); then the slowest seen per (path, mode) decides.
COMPILE_GUESS = {"max-autotune": 60.0, "max-autotune-no-cudagraphs": 60.0}
DEFAULT_COMPILE_GUESS = 30.0
TIMING_OVERHEAD = 1.3  # a workload's timing takes about this times --seconds (warm-up, rounds)
PROFILE_MODELS = ("r50", "r50_max")
SCHEMA = "pfdeploy.gpu-bench/2"
DONE_WHEN = {"r50_max": 1.28, "r50_hybrid": 1.19}  # issue 18: FP16 b256 device, fastest paths vs r50's
FP32_TODAY = {"r50_max": 1.27, "r50_hybrid": 1.20}  # docs/gpu-check.md, 2026-11-30, eager_cg

log = logging.getLogger("bench_gpu")


# --- environment ---------------------------------------------------------------------------------


def _driver_version() -> str | None:
    """The NVIDIA driver version (nvidia-smi), or the CUDA driver API version via cuda-python."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        return out.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    try:
        from cuda.bindings import runtime

        status, version = runtime.cudaDriverGetVersion()
        return f"CUDA driver API {version // 1000}.{(version % 1000) // 10}" if int(status) == 0 else None
    except ImportError:
        return None


def gpu_environment(device: int = 0) -> dict:
    """GPU, driver and software versions the numbers were measured with."""
    import importlib.util

    import torch

    props = torch.cuda.get_device_properties(device)
    versions = {}
    for name in ("cuda-bindings", "triton"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:  # noqa: BLE001 - not installed, or no metadata
            versions[name] = None
    return {
        "gpu": torch.cuda.get_device_name(device),
        "gpu_count": torch.cuda.device_count(),
        "compute_capability": f"{props.major}.{props.minor}",
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "driver": _driver_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cuda_bindings": versions["cuda-bindings"],
        "triton": versions["triton"] if importlib.util.find_spec("triton") else None,
        "python": platform.python_version(),
    }


# --- time budget ---------------------------------------------------------------------------------


class Budget:
    """A hard deadline split over the (precision, batch) groups, and compile-time estimates per path."""

    def __init__(self, seconds: float, groups: list[tuple[str, int]], clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.deadline = clock() + seconds
        self.weights = {g: GROUP_WEIGHT.get(g, 1.0) for g in groups}
        self.weights.update({g: GROUP_WEIGHT["more"] for g in groups if isinstance(g, str)})
        self.compile_seconds: dict[str, float] = {}
        self.group_deadline = self.deadline

    def remaining(self) -> float:
        return max(0.0, self.deadline - self.clock())

    def start_group(self, group, floor: float = 0.0) -> float:
        """Open `group` (a (precision, batch) pair or a phase key): its deadline is its weight's share of what is
        left (the groups after it keep theirs), at least `floor` seconds (all that is left if less)."""
        left = sum(w for g, w in self.weights.items())
        share = self.weights.pop(group, 1.0) / max(left, 1e-9)
        seconds = max(self.remaining() * share, min(floor, self.remaining()))
        self.group_deadline = self.clock() + seconds
        return self.group_deadline - self.clock()

    def group_left(self) -> float:
        return max(0.0, min(self.group_deadline, self.deadline) - self.clock())

    def estimate(self, path: str, mode: str) -> float:
        """Expected seconds to open (compile) one session of `path` compiled in `mode`."""
        return self.compile_seconds.get(f"{path}|{mode}", COMPILE_GUESS.get(mode, DEFAULT_COMPILE_GUESS))

    def record(self, path: str, mode: str, seconds: float) -> None:
        key = f"{path}|{mode}"
        self.compile_seconds[key] = max(seconds, self.compile_seconds.get(key, 0.0))

    def fits(self, path: str, mode: str, reserve: float) -> bool:
        """Whether opening one more `path` session leaves `reserve` seconds of this group for the timing."""
        return self.group_left() - self.estimate(path, mode) >= reserve

    def mode_that_fits(self, path: str, mode: str, reserve: float, fallback: str | None = FALLBACK_MODE) -> str | None:
        """`mode` when a `path` compile in it fits (`fits`), else `fallback` when that one fits, else None."""
        if self.fits(path, mode, reserve):
            return mode
        if fallback and fallback != mode and self.fits(path, fallback, reserve):
            return fallback
        return None


# --- what a path is ------------------------------------------------------------------------------


def torch_options(path: str, compile_mode: str) -> dict:
    """The torch-backend `load` options of a torch path (pt2 is a package, not a torch session)."""
    table = {
        "eager_cg": {"fold_bn": False, "channels_last": True, "cuda_graph": True},
        "folded": {"fold_bn": True, "channels_last": True, "cuda_graph": True},
        # cuda_graph: Inductor's own in max-autotune/reduce-overhead, the session's in the other modes
        "compiled": {"fold_bn": True, "compile": compile_mode, "cuda_graph": True},
        "fused": {"fold_bn": True, "compile": compile_mode, "cuda_graph": True, "fused": True},
    }
    return dict(table[path])


def group_compile_mode(group: tuple[str, int], headline_mode: str, other_mode: str) -> str:
    """The torch.compile mode of a group's compiled paths: the expensive autotuning where the criterion is
    (HEADLINE), a cheap compile with CUDA graphs elsewhere, so the whole run fits the budget."""
    return headline_mode if group == HEADLINE else other_mode


def job_order(models, paths) -> list[tuple[str, str]]:
    """(path, model) in the order a group opens them: the cheap paths of every model first, then the compiling
    ones, the ResNets (the criterion) before the transformers, path by path, so a budget that runs out
    cuts the least important compiles."""
    cheap = [(p, m) for p in paths if p not in COMPILING_PATHS for m in models]
    compiling = [(p, m) for p in paths if p in COMPILING_PATHS for m in models]
    rank = {m: i for i, m in enumerate(models)}
    compiling.sort(key=lambda pm: (not pm[1].startswith("r50"), list(paths).index(pm[0]), rank[pm[1]]))
    return cheap + compiling



def headline_jobs(models, paths) -> list[tuple[str, str]]:
    """(path, model) of the headline phase (FP16 batch 256; `models` are its HEADLINE_MODELS), most important
    first: every eager_cg (cheap; r50's is the baseline), r50's compiled path, the PF models' fused paths
    (compiled where fused is not asked), then their compiled paths and the folded ones."""
    pf = [m for m in models if m != BASELINE]
    core = [("eager_cg", m) for m in models] + [("compiled", m) for m in models if m == BASELINE]
    core += [("fused" if "fused" in paths else "compiled", m) for m in pf]
    extra = [("compiled", m) for m in pf] + [("folded", m) for m in models]
    jobs = []
    for job in core + extra:
        if job[0] in paths and job not in jobs:
            jobs.append(job)
    return jobs


@dataclass
class Phase:
    """One interleaved timing run: a (precision, batch) and the (path, model) jobs it opens, in order."""

    key: str  # "fp16|b256", or "fp16|b256|more" for the headline group's later phase
    precision: str
    batch: int
    jobs: list[tuple[str, str]]
    weight: Any  # the Budget key: (precision, batch), or "more"
    floor: float = 0.0  # seconds it gets at least (HEADLINE_FLOOR for the headline)
    progressive: bool = False  # timed again after each compiled session, and written, so a kill keeps numbers
    compile_mode: str = ""  # "headline" or "rest": which of the settings' compile modes its compiles use


def plan_phases(settings) -> list[Phase]:
    """The phases of a run, in order (pure). FP16 batch 256 (HEADLINE) comes first as the headline phase: the
    ResNets' headline_jobs only, a guaranteed HEADLINE_FLOOR of time, timed after each compiled session. The
    other (precision, batch) groups follow with every model and path (job_order). The transformers and the
    pt2 packages at FP16 batch 256 come last ("|more", with r50's eager_cg again as the same-run anchor of
    their ratios), when time remains."""
    phases, later = [], []
    for precision, batch in settings.groups():
        key = f"{precision}|b{batch}"
        if (precision, batch) != HEADLINE:
            phases.append(Phase(key, precision, batch, job_order(settings.models, settings.paths), (precision, batch),
                                compile_mode="rest"))
            continue
        resnets = [m for m in settings.models if m in HEADLINE_MODELS]
        others = [m for m in settings.models if m not in HEADLINE_MODELS]
        jobs = headline_jobs(resnets, settings.paths)
        rest = job_order(others, [p for p in settings.paths if p != "pt2"])
        rest += [("pt2", m) for m in resnets + others if "pt2" in settings.paths]
        if not jobs:
            phases.append(Phase(key, precision, batch, rest, HEADLINE, HEADLINE_FLOOR, True, "headline"))
            continue
        phases.insert(0, Phase(key, precision, batch, jobs, HEADLINE, HEADLINE_FLOOR, True, "headline"))
        if rest:
            anchor = [("eager_cg", BASELINE)] if ("eager_cg", BASELINE) in jobs else []
            later.append(Phase(key + "|more", precision, batch, anchor + rest, "more", compile_mode="rest"))
    return phases + later


def merge_rows(rows: list[dict], phase: str, new: list[dict]) -> list[dict]:
    """`rows` with `phase`'s rows replaced by `new` (tagged with it), less those of `new` that an earlier
    phase already measured (same model, path, precision, batch, mode: the headline's numbers stay)."""
    kept = [r for r in rows if r.get("phase") != phase]
    seen = {(r["model"], r["path"], r["precision"], r["batch"], r["mode"]) for r in kept}
    return kept + [{**r, "phase": phase} for r in new
                   if (r["model"], r["path"], r["precision"], r["batch"], r["mode"]) not in seen]


CANARY = """
import sys
import torch
from pfdeploy.kernels.ops import pool_gemm, register_op
from pfdeploy.kernels.reference import pool_gemm_composite
register_op()
dtype, tol = {"fp16": (torch.float16, 3e-2), "fp32": (torch.float32, 1e-3)}[sys.argv[1]]
g = torch.Generator().manual_seed(0)
for b, h, w, k, n, act in [(2, 56, 56, 64, 256, "relu"), (2, 7, 7, 512, 2048, "relu"), (2, 14, 14, 1152, 384, "gelu"),
                           (1, 28, 28, 128, 512, "relu")]:
    x = torch.randn(b, h, w, k, generator=g).to("cuda", dtype)
    wt = (torch.randn(n, k, generator=g) / k ** 0.5).to("cuda", dtype)
    bias = torch.randn(n, generator=g).to("cuda", dtype)
    res = torch.randn(b, h, w, n, generator=g).to("cuda", dtype)
    got = pool_gemm(x, wt, bias, res, act, True).float()
    want = pool_gemm_composite(x.float(), wt.float(), bias.float(), res.float(), act, True)
    torch.cuda.synchronize()
    err = ((got - want).abs().max() / want.abs().max()).item()
    assert err < tol, f"{(b, h, w, k, n, act, sys.argv[1])}: relative error {err:.3g}"
print("canary ok")
"""


def fused_canary(precision: str = "fp16", timeout: float = CANARY_SECONDS) -> str | None:
    """Run pfdeploy's fused kernel (autotuned, in `precision`, the shapes of R50-max's and ViT-S-max's fused
    layers) against PyTorch in a child process: None when it is right, else why that precision's fused paths
    are skipped (a faulting kernel would otherwise poison this process's CUDA context and every later
    measurement). One per precision: FP32's tiles failing must not take FP16's fused path with them."""
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run([sys.executable, "-c", CANARY, precision], env=env, capture_output=True, text=True,
                              timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return f"the {precision} fused kernel canary did not finish in {timeout:.0f} s"
    if done.returncode != 0 or "canary ok" not in done.stdout:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
        return f"the {precision} fused kernel canary failed (exit {done.returncode}): {tail}"
    return None


def path_problem(model: str, path: str, triton: str | None, pt2: str | None = None) -> str | None:
    """Why `path` is not measured for `model` (None when it is): no fusable layer, no Triton (or its canary
    failed), or (pt2) no CUDA toolkit or C++ compiler for AOTInductor (`pt2_toolchain_problem`)."""
    if path == "pt2" and pt2:
        return pt2
    if path == "fused" and model not in FUSABLE:
        return "no PF layer to fuse (its fused path is its compiled path)"
    if path == "fused" and triton:
        return triton
    return None


def seeded_model(name: str):
    """The registered model with seeded random weights in which every weight and statistic is non-trivial
    (BatchNorm and LayerNorm included, as a trained network's are): speed does not depend on the values,
    but verification does, and a fresh initialization's near-equal logits would flip top-1 on rounding.

    The same weights on every call (the reference and every session of a model must agree): built once
    per name with torch's RNG seeded inside `torch.random.fork_rng` (the caller's RNG is left as it was),
    then deep-copied, so that a session moving or converting its model never changes the next one's."""
    import copy

    return copy.deepcopy(_seeded_master(name))


@functools.cache
def _seeded_master(name: str):
    import torch

    from pfdeploy.models import create_model, get_config

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_model(name, num_classes=get_config(name).num_classes)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if not value.is_floating_point():
                continue
            noise = torch.randn(value.shape, generator=gen)
            if key.endswith("running_var"):
                value.copy_(0.5 + noise.abs())
            elif key.endswith("weight") and value.dim() == 1:  # norm scales
                value.copy_(1.0 + 0.2 * noise)
            else:
                value.add_(0.02 * noise)
    return model.eval()


class OnDevice:
    """The FP32 reference on the GPU (TF32 off) behind verify_session's CPU-tensor interface."""

    def __init__(self, model, device: str = "cuda"):
        import torch

        self.model = model.to(device, dtype=torch.float32)
        self.device = device

    def __call__(self, x):
        import torch

        from pfdeploy.runtime.torch_backend import tf32_mode

        with torch.no_grad(), tf32_mode(False):
            return self.model(x.to(self.device)).float().cpu()


def open_session(model: str, path: str, precision: str, batch: int, compile_mode: str, workdir: Path):
    """The CUDA session of one (model, path, precision, batch)."""
    from pfdeploy.runtime import load
    from pfdeploy.runtime.torch_backend import TorchSession, metadata_for_model

    if path == "pt2":
        from pfdeploy.export.pt2 import pt2_from_model

        package = pt2_from_model(seeded_model(model), workdir / f"{model}.{precision}.b{batch}.pt2", batch=batch,
                                 precision=precision, device="cuda", max_autotune=compile_mode.startswith("max"))
        return load(package, device="cuda", cuda_graph=True)
    net = seeded_model(model)
    meta = metadata_for_model(net, input_format="float-nchw", precision=precision, checkpoint_sha256="random")
    return TorchSession(net, device="cuda", precision=precision, metadata=meta, **torch_options(path, compile_mode))


@dataclass
class PathResult:
    """What happened to one (model, path) of a group: ok, failed or skipped, and why."""

    model: str
    path: str
    precision: str
    batch: int
    status: str = "ok"
    reason: str | None = None
    prepare_seconds: float | None = None
    verify: dict | None = None
    plan: dict | None = field(default=None)
    compile_mode: str | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def prepare(opened, batch: int, reference, samples: int) -> dict:
    """Compile `opened` at `batch` (first calls) and verify it; returns the verify summary."""
    from pfdeploy.runtime.verify import verify_session

    x = opened.input_spec.example(batch)
    opened(x)
    run = opened.device_fn(x)
    if run is not None:
        run()
    report = verify_session(opened, reference, samples=samples, batch=batch)
    worst = [s for s in report.sources.values()]
    return {"passed": report.passed, "precision": report.precision,
            "max_rel": max((s["max_rel"] or 0.0) for s in worst), "cosine": min((s["cosine"] or 0.0) for s in worst),
            "top1": min((s["top1"] or 0.0) for s in worst), "failures": [f for s in worst for f in s["failures"]]}


def timing_reserve(sessions: int, seconds: float) -> float:
    """Seconds a group needs to time `sessions` sessions (two modes each) once they are open."""
    return 2 * sessions * seconds * TIMING_OVERHEAD + 5.0


def open_group(models, paths, precision: str, batch: int, *, budget: Budget, compile_mode: str, workdir: Path,
               opener=open_session, references: dict, samples: int, seconds: float, triton: str | None,
               say=print, jobs=None, sessions=None, on_open=None,
               pt2: str | None = None) -> tuple[list[tuple[str, Any]], list[PathResult]]:
    """Open, compile and verify every (path, model) of `jobs` (default: `job_order(models, paths)`); a failure
    or a skip is recorded, never raised. A compile that would not fit the group's time left in `compile_mode`
    runs in FALLBACK_MODE when that fits (said in its reason), else is skipped. `sessions`: already open
    ones to add to; `on_open(sessions, results, path)` after each job (to write or time what is there).
    Returns ([(label "model|path", session)], [PathResult]): the sessions that opened, those that failed
    verification included (status "unverified": timed, never a fastest path)."""
    sessions, results = (sessions if sessions is not None else []), []
    for path, model in (jobs if jobs is not None else job_order(models, paths)):
        result = PathResult(model, path, precision, batch)
        results.append(result)
        result.reason = path_problem(model, path, triton, pt2)
        if result.reason is None and model not in references:
            result.reason = "its FP32 reference could not be built (see errors)"
        reserve = timing_reserve(len(sessions) + 1, seconds)
        mode = compile_mode
        if result.reason is None and path in COMPILING_PATHS:
            mode = budget.mode_that_fits(path, compile_mode, reserve)
            if mode is None:
                result.reason = (f"time budget: {budget.group_left():.0f} s left in this group, a {path} compile "
                                 f"({compile_mode}) takes about {budget.estimate(path, compile_mode):.0f} s")
        if result.reason is not None:
            result.status = "skipped"
        else:
            result.compile_mode = mode if path in COMPILING_PATHS else None
            opened = open_one(result, opener, mode, workdir, references[model], samples)
            if path in COMPILING_PATHS:
                budget.record(path, mode, result.prepare_seconds)
                if mode != compile_mode and result.status != "failed":
                    note = f"compiled {mode}: {compile_mode} would not fit the time left"
                    result.reason = f"{result.reason}; {note}" if result.reason else note
            if opened is not None:
                sessions.append((f"{model}|{path}", opened))
                verdict = "verified" if result.status == "ok" else "NOT verified"
                say(f"[gpu-check]   {model} {path}: ready in {result.prepare_seconds:.0f} s, {verdict} "
                    f"(max_rel {result.verify['max_rel']:.2g})")
            else:
                say(f"[gpu-check]   {model} {path}: {result.status}: {result.reason}")
        if on_open is not None:
            on_open(sessions, results, path)
    return sessions, results


def open_one(result: PathResult, opener, compile_mode: str, workdir: Path, reference, samples: int):
    """Open, compile and verify one session into `result`; the session, or None (closed) when it failed to
    open or compile."""
    import torch

    started = time.monotonic()
    opened = None
    try:
        opened = opener(result.model, result.path, result.precision, result.batch, compile_mode, workdir)
        described = opened.describe()
        result.plan = described.get("plan") or described.get("package")
        result.verify = prepare(opened, result.batch, reference, samples)
        if not result.verify["passed"]:  # timed all the same, but never a model's fastest path
            result.status, result.reason = "unverified", "verification: " + "; ".join(result.verify["failures"][:3])
    except Exception as exc:  # noqa: BLE001 - one failing path must not lose the others
        result.status, result.reason = "failed", _one_line(exc)
        log.warning("%s %s %s b%d failed: %s", result.model, result.path, result.precision, result.batch,
                    result.reason)
    result.prepare_seconds = round(time.monotonic() - started, 1)
    if result.status in ("ok", "unverified"):
        return opened
    if opened is not None:
        with contextlib.suppress(Exception):
            opened.close()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return None


# --- profile -------------------------------------------------------------------------------------

#: Kernel-name fragments -> kind, first match wins (cuDNN, cuBLAS/CUTLASS, ATen and Inductor's triton_* names).
KERNEL_KINDS = (
    ("pfdeploy fused pool+1x1", ("pool_gemm",)),
    ("max-pool", ("max_pool", "maxpool", "pooling_fw", "max_pool2d")),
    ("avg-pool", ("avg_pool", "avgpool", "adaptive_avg")),
    ("layout / copy", ("nchwtonhwc", "nhwctonchw", "copy", "transpose", "permute", "cat_", "contiguous")),
    ("attention", ("flash", "fmha", "attention", "sdpa", "efficient_attention")),
    ("BatchNorm", ("batch_norm", "batchnorm", "bn_fw", "bn_bw")),
    ("convolution / matmul", ("conv", "gemm", "cutlass", "cudnn", "xmma", "sm90_", "sm80_", "implicit", "triton_tem",
                              "_mm_", "matmul", "wgmma", "cublas", "splitk")),
    ("reduction / norm", ("triton_red", "triton_per", "reduce", "softmax", "layer_norm", "layernorm", "mean")),
    ("elementwise (bias, ReLU, GELU, add)", ("elementwise", "triton_poi", "relu", "gelu", "add", "vectorized",
                                            "unrolled", "mul")),
)


def kernel_kind(name: str) -> str:
    """The kind of a CUDA kernel by its name (KERNEL_KINDS), "other" when none matches."""
    low = name.lower()
    return next((kind for kind, parts in KERNEL_KINDS if any(p in low for p in parts)), "other")


def kinds_from_events(events: list[tuple[str, float]], iterations: int) -> dict:
    """[(kernel name, device microseconds)] -> {kind: ms per iteration}, total, kernel count, top kernels."""
    by_kind: dict[str, float] = {}
    by_name: dict[str, float] = {}
    for name, us in events:
        by_kind[kernel_kind(name)] = by_kind.get(kernel_kind(name), 0.0) + us
        by_name[name] = by_name.get(name, 0.0) + us
    per = max(iterations, 1) * 1000.0
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:8]
    return {"ms_per_iteration": {k: round(v / per, 4) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
            "total_ms": round(sum(by_kind.values()) / per, 4),
            "kernels_per_iteration": len(events) / max(iterations, 1),
            "top": [{"kernel": n[:120], "kind": kernel_kind(n), "ms": round(v / per, 4)} for n, v in top]}


def kernel_events(prof) -> list[tuple[str, float]]:
    """(kernel name, microseconds) of every device kernel a torch.profiler run recorded."""
    from torch.autograd import DeviceType

    events = [(e.name, float(e.time_range.elapsed_us())) for e in prof.events() if e.device_type == DeviceType.CUDA]
    if events:
        return events
    # Older layouts attach kernels only to the CPU ops: take the averaged table's device-side rows.
    return [(row.key, float(row.self_device_time_total)) for row in prof.key_averages()
            if row.device_type == DeviceType.CUDA and row.self_device_time_total > 0]


def profile_session(session, batch: int, iterations: int = 3) -> dict:
    """torch.profiler over `iterations` device-only calls: device time by kernel kind."""
    from torch.profiler import ProfilerActivity, profile

    run = session.device_fn(session.input_spec.example(batch))
    run()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(iterations):
            run()
    events = kernel_events(prof)
    result = kinds_from_events(events, iterations)
    if not events:
        result["note"] = "no kernels visible: CUDA-graph replays hid them from this profiler"
    return result


def profile_group(sessions: list[tuple[str, Any]], rows: list[dict], batch: int, say=print) -> dict:
    """Before (eager_cg) and after (fastest device-only path) of PROFILE_MODELS, from an open group."""
    open_by_label = dict(sessions)
    out = {}
    for model in PROFILE_MODELS:
        mine = [r for r in rows if r["model"] == model and r["mode"] == "device"]
        if not mine:
            continue
        fastest = max(mine, key=lambda r: r["images_per_second"])["path"]
        for role, path in (("before", BASELINE_PATH), ("after", fastest)):
            session = open_by_label.get(f"{model}|{path}")
            if session is None or f"{model}|{role}" in out:
                continue
            try:
                out[f"{model}|{role}"] = {"model": model, "role": role, "path": path, **profile_session(session, batch)}
            except Exception as exc:  # noqa: BLE001 - a profile is extra; never lose the measurements for it
                out[f"{model}|{role}"] = {"model": model, "role": role, "path": path, "error": _one_line(exc)}
            say(f"[gpu-check]   profiled {model} {path} ({role})")
    return out


# --- rows, fastest paths, criteria ---------------------------------------------------------------


def rows_from_report(report: dict, precision: str) -> list[dict]:
    """One row per (model, path, batch, mode) of one group's pfdeploy.bench/1 report, with img/s relative
    to r50 on the same path and to r50's eager_cg in the same run."""
    results = [r for r in report["results"] if "skipped" not in r]
    rows = []
    for r in results:
        model, _, path = r["label"].partition("|")
        rows.append({"model": model, "path": path, "precision": precision, "batch": r["batch"], "mode": r["mode"],
                     "images_per_second": r["images_per_second"], "p50_ms": r["latency_ms"]["p50"]})
    rate = {(r["model"], r["path"], r["batch"], r["mode"]): r["images_per_second"] for r in rows}
    for row in rows:
        same = rate.get((BASELINE, row["path"], row["batch"], row["mode"]))
        base = rate.get((BASELINE, BASELINE_PATH, row["batch"], row["mode"]))
        row["speed_vs_r50_same_path"] = row["images_per_second"] / same if same else None
        row["speed_vs_r50_eager_cg"] = row["images_per_second"] / base if base else None
        row["paper_speed_vs_r50"] = PAPER_SPEEDUP.get(row["model"])
    return rows


def fastest_paths(rows: list[dict]) -> list[dict]:
    """Each model's fastest verified path per (precision, batch, mode), with its speed over r50's fastest
    path and over r50's eager_cg in the same run."""
    best: dict[tuple, dict] = {}
    for row in (r for r in rows if r.get("verified", True)):
        key = (row["precision"], row["batch"], row["mode"], row["model"])
        if key not in best or row["images_per_second"] > best[key]["images_per_second"]:
            best[key] = row
    out = []
    for (precision, batch, mode, model), row in sorted(best.items(), key=lambda kv: (kv[0][0], -kv[0][1], kv[0][2])):
        r50 = best.get((precision, batch, mode, BASELINE))
        base = next((r["images_per_second"] for r in rows if (r["model"], r["path"], r["precision"], r["batch"],
                     r["mode"]) == (BASELINE, BASELINE_PATH, precision, batch, mode)), None)
        out.append({"precision": precision, "batch": batch, "mode": mode, "model": model, "path": row["path"],
                    "images_per_second": row["images_per_second"],
                    "speed_vs_r50_fastest": row["images_per_second"] / r50["images_per_second"] if r50 else None,
                    "speed_vs_r50_eager_cg": row["images_per_second"] / base if base else None,
                    "paper_speed_vs_r50": PAPER_SPEEDUP.get(model)})
    return out


def criteria(fastest: list[dict], paths: list[dict]) -> list[dict]:
    """Issue 18's done-when checks from the measured rows: met, not met, or not measured."""
    pick = {(f["precision"], f["batch"], f["mode"], f["model"]): f for f in fastest}

    def ratio(precision, batch, model, key="speed_vs_r50_fastest"):
        row = pick.get((precision, batch, "device", model))
        return None if row is None else row[key]

    def check(what, value, limit):
        status = "not measured" if value is None else ("met" if value >= limit else "not met")
        return {"criterion": what, "value": None if value is None else round(value, 3), "limit": limit,
                "status": status}

    checks = [check(f"FP16 b256 device: {m} fastest / r50 fastest", ratio("fp16", 256, m), limit)
              for m, limit in DONE_WHEN.items()]
    checks.append(check("FP16 b256 device: r50 fastest / r50 eager_cg", ratio("fp16", 256, BASELINE,
                                                                               "speed_vs_r50_eager_cg"), 1.3))
    checks += [check(f"FP32 b256 device: {m} fastest / r50 fastest", ratio("fp32", 256, m), limit)
               for m, limit in FP32_TODAY.items()]
    checks += [check(f"FP16 b1 device: {m} fastest / r50 fastest", ratio("fp16", 1, m), 1.0) for m in DONE_WHEN]
    compiled = [p for p in paths
                if p["precision"] == "fp16" and p["path"] in COMPILING_PATHS and p["status"] != "skipped"]
    bad = [f"{p['model']} {p['path']} b{p['batch']}" for p in compiled if p["status"] != "ok"]
    checks.append({"criterion": "every compiled/fused FP16 path passes verify's fp16 row", "value": None, "limit": None,
                   "status": "not measured" if not compiled else ("met" if not bad else "not met: " + ", ".join(bad))})
    return checks


# --- the run -------------------------------------------------------------------------------------


@dataclass
class Settings:
    """What one run measures (see `settings_for`)."""

    models: tuple[str, ...] = MODELS
    precisions: tuple[str, ...] = PRECISIONS
    batches: tuple[int, ...] = BATCHES
    paths: tuple[str, ...] = PATHS
    seconds: float = 0.5
    budget: float = 420.0
    compile_mode: str = "max-autotune"  # the HEADLINE group's compiled paths
    compile_mode_rest: str = "reduce-overhead"  # the other groups' (a cheap compile with CUDA graphs)
    samples: int = 10  # per verification source: top-1 >= 0.9 (fp16 row) allows one flip in ten
    quick: bool = False

    def groups(self) -> list[tuple[str, int]]:
        return [(p, b) for p in self.precisions for b in self.batches]

    def to_dict(self) -> dict:
        return {**self.__dict__, "img_size": 224, "weights": "random (seeded, every weight and statistic perturbed)",
                "tf32": False,
                "models": list(self.models), "precisions": list(self.precisions), "batches": list(self.batches),
                "paths": list(self.paths)}


def settings_for(quick: bool = False, **changes: Any) -> Settings:
    """The default (or --quick) settings, with the given values replacing them (None: keep); a value
    outside what the benchmark measures raises ValueError naming it."""
    base = Settings(**QUICK, quick=True) if quick else Settings()
    for key, value in changes.items():
        if value is not None:
            setattr(base, key, tuple(value) if isinstance(value, list) else value)
    problem = settings_problem(base)
    if problem:
        raise ValueError(problem)
    return base


def settings_problem(settings: Settings) -> str | None:
    """What is wrong with `settings` (None if nothing)."""
    from pfdeploy.errors import PfdeployError
    from pfdeploy.models import resolve_name

    for what, given, known in (("path", settings.paths, PATHS), ("precision", settings.precisions, PRECISIONS)):
        unknown = [g for g in given if g not in known]
        if unknown or not given:
            return f"unknown {what} {', '.join(unknown) or '(none given)'}; use a subset of {','.join(known)}"
    if not settings.models or not settings.batches or any(b < 1 for b in settings.batches):
        return "give at least one model and batch sizes >= 1"
    try:
        settings.models = tuple(resolve_name(m) for m in settings.models)
    except PfdeployError as exc:
        return str(exc)
    if settings.seconds <= 0 or settings.budget <= 0:
        return "--seconds and --budget must be > 0"
    return None


def gpu_reference(name: str) -> OnDevice:
    """The reference a group's sessions are verified against: the seeded FP32 model on the GPU."""
    return OnDevice(seeded_model(name))


def run_benchmark(settings: Settings, *, command: str = "", say=print, on_progress=None, opener=open_session,
                  reference=gpu_reference, result: dict | None = None) -> dict:
    """Measure every phase (`plan_phases`) within the budget; `on_progress(result)` after every session opened
    and every timing (to write the files, so that a run killed from outside keeps what it measured).

    opener(model, path, precision, batch, compile_mode, workdir) -> Session and reference(model) -> callable
    default to the CUDA ones (open_session, gpu_reference)."""
    import torch

    from pfdeploy.kernels import triton_problem
    from pfdeploy.runtime.bench import benchmark

    for limit in ("recompile_limit", "cache_size_limit"):  # many models share PFResNet.forward; reset per group too
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, 64)
    result = result if result is not None else new_result(settings, command)
    phases = plan_phases(settings)
    budget = Budget(settings.budget, [ph.weight for ph in phases])
    triton = triton_problem()
    canaries: dict[str, str | None] = {}
    pt2 = None
    if any(path == "pt2" for ph in phases for path, _ in ph.jobs):
        from pfdeploy.export.pt2 import pt2_toolchain_problem

        pt2 = pt2_toolchain_problem("cuda" if torch.cuda.is_available() else "cpu")
        result["pt2_toolchain"] = pt2 or "ok"
    progress = on_progress or (lambda r: None)

    def summarize(status: str) -> None:
        result["fastest"] = fastest_paths(result["rows"])
        result["criteria"] = criteria(result["fastest"], result["paths"])
        result["status"] = status
        progress(result)

    def time_sessions(phase: Phase, sessions, paths, seconds: float) -> None:
        report = benchmark(sessions, [phase.batch], seconds=seconds, warmup=3)
        result["bench"][phase.key] = report
        rows = rows_from_report(report, phase.precision)
        verified = {(p.model, p.path) for p in paths if p.status == "ok"}
        for row in rows:
            row["verified"] = (row["model"], row["path"]) in verified
        result["rows"] = merge_rows(result["rows"], phase.key, rows)

    with tempfile.TemporaryDirectory(prefix="pfdeploy-gpu-check-") as scratch:
        for phase in phases:
            precision, batch = phase.precision, phase.batch
            left = budget.start_group(phase.weight, phase.floor)
            if left < 5.0:
                result["errors"].append(f"{phase.key}: no time left in the budget")
                continue
            fused_problem = triton
            if fused_problem is None and any(path == "fused" for path, _ in phase.jobs):
                if precision not in canaries:
                    say(f"[gpu-check] {precision} fused kernel canary (a child process, so a kernel fault cannot "
                        "take this run down)")
                    canaries[precision] = fused_canary(precision, min(CANARY_SECONDS, max(10.0, budget.group_left())))
                    result.setdefault("fused_canary", {})[precision] = canaries[precision] or "ok"
                fused_problem = canaries[precision]
            models = list(dict.fromkeys(m for _, m in phase.jobs))
            say(f"[gpu-check] {phase.key}: {len(phase.jobs)} (model, path) jobs, {budget.group_left():.0f} s of the "
                "budget for this phase")
            references = {}
            for name in models:
                try:
                    references[name] = reference(name)
                except Exception as exc:  # noqa: BLE001 - that model's paths fail, the others are measured
                    result["errors"].append(f"{name} {precision} b{batch} reference: {_one_line(exc)}")
            mode = settings.compile_mode if phase.compile_mode == "headline" else settings.compile_mode_rest
            sessions: list = []
            paths: list[PathResult] = []
            first = len(result["paths"])

            def opened(open_now, results, path, phase=phase, first=first, paths=paths):
                paths[:] = results
                result["paths"][first:] = [r.to_dict() for r in results]
                timed = False
                if phase.progressive and path in COMPILING_PATHS and results[-1].status in ("ok", "unverified"):
                    try:  # a provisional interleaved run of what is open: kept if the run is killed later
                        time_sessions(phase, open_now, results, PROVISIONAL_SECONDS)
                        timed = True
                    except Exception as exc:  # noqa: BLE001 - the final timing of the phase tries again
                        log.warning("%s provisional timing failed: %s", phase.key, _one_line(exc))
                summarize(f"running: {phase.key}, {len(results)}/{len(phase.jobs)} jobs"
                          + (" (provisional timing)" if timed else ""))

            try:
                open_group(models, settings.paths, precision, batch, budget=budget, compile_mode=mode,
                           workdir=Path(scratch), opener=opener, references=references, samples=settings.samples,
                           seconds=settings.seconds, triton=fused_problem, say=say, jobs=phase.jobs,
                           sessions=sessions, on_open=opened, pt2=pt2)
                if sessions:
                    time_sessions(phase, sessions, paths, settings.seconds)
                    if phase.key == "|".join([HEADLINE[0], f"b{HEADLINE[1]}"]):
                        rows = [r for r in result["rows"] if r.get("phase") == phase.key]
                        result["profile"] = profile_group(sessions, rows, batch, say=say)
            except Exception as exc:  # noqa: BLE001 - keep the other phases' numbers
                result["errors"].append(f"{phase.key}: {_one_line(exc)}")
                say(f"[gpu-check] {phase.key} timing failed: {_one_line(exc)}")
            finally:
                for _, session in sessions:
                    with contextlib.suppress(Exception):
                        session.close()
                references.clear()
                torch._dynamo.reset()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            summarize(f"running: {phase.key} timed")
    summarize("complete")
    return result


def new_result(settings: Settings, command: str, environment: dict | None = None) -> dict:
    """The result dict before any measurement (its environment read from the GPU unless given)."""
    return {"schema": SCHEMA, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command or " ".join([Path(sys.executable).name, *sys.argv]),
            "environment": environment or gpu_environment(), "settings": settings.to_dict(), "status": "starting",
            "rows": [], "paths": [], "fastest": [], "criteria": [], "profile": {}, "bench": {}, "errors": []}


# --- markdown ------------------------------------------------------------------------------------


def _x(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def markdown(result: dict) -> str:
    """The docs/gpu-check.md text of a gpu-check result dict."""
    env = result["environment"]
    lines = ["# GPU check", "",
             f"Measured {result['created']} by `{result['command']}` on **{env['gpu']}** (compute capability "
             f"{env['compute_capability']}, {env['gpu_memory_gib']} GiB), driver {env['driver']}, torch {env['torch']} "
             f"(CUDA {env['torch_cuda']}, cuDNN {env['cudnn']}), Triton {env.get('triton')}, cuda-bindings "
             f"{env.get('cuda_bindings')}, Python {env['python']}. Status: {result['status']}.", ""]
    tests = result.get("tests")
    if tests:
        lines += [f"Tests: `{tests['command']}` -> exit {tests['exit_code']}: {tests['summary']}", ""]
    s = result["settings"]
    lines += ["torch CUDA backend and AOTInductor packages, 224x224, seeded random weights (perturbed), FP32 "
              "without TF32, "
              f"compile mode {s.get('compile_mode')} for FP16 batch 256, {s.get('compile_mode_rest')} for the other "
              "groups (pt2: max-autotune with the former); for each precision and batch all models and paths timed "
              "in one interleaved run (pfdeploy.runtime.bench.benchmark), each path compiled at that batch and "
              "verified against the FP32 model first. Paths: eager_cg = eager + channels-last + CUDA graphs, BatchNorm "
              "unfolded (the path measured before); folded = the same with BatchNorm folded; compiled = folded + "
              "torch.compile; fused = compiled + pfdeploy's fused pool+1x1 Triton kernel; pt2 = folded, "
              "AOTInductor package, CUDA graphs. device: input already on the GPU; end_to_end: host array in, "
              "host logits out.", ""]
    lines += ["## Each model's fastest path", ""]
    lines += _table(["precision", "batch", "mode", "model", "fastest path", "img/s", "vs r50 fastest",
                     "vs r50 eager_cg", "paper"],
                    [[f["precision"], f["batch"], f["mode"], f["model"], f["path"], f"{f['images_per_second']:.1f}",
                      _x(f["speed_vs_r50_fastest"]), _x(f["speed_vs_r50_eager_cg"]), _x(f["paper_speed_vs_r50"])]
                     for f in result["fastest"]]) + [""]
    lines += ["## Issue 18's done-when checks", ""]
    lines += _table(["criterion", "value", "limit", "status"],
                    [[c["criterion"], "-" if c["value"] is None else c["value"], "-" if c["limit"] is None else
                      c["limit"], c["status"]] for c in result["criteria"]]) + [""]
    lines += _profile_lines(result.get("profile") or {})
    lines += ["## Paths: compile and verification", ""]
    lines += _table(["model", "path", "precision", "batch", "status", "prepare s", "verify max_rel", "reason"],
                    [[p["model"], p["path"], p["precision"], p["batch"], p["status"],
                      "-" if p["prepare_seconds"] is None else p["prepare_seconds"],
                      "-" if not p.get("verify") else f"{p['verify']['max_rel']:.2g}", p.get("reason") or ""]
                     for p in result["paths"]]) + [""]
    lines += ["## Every measurement", ""]
    lines += _table(["model", "path", "precision", "batch", "mode", "img/s", "p50 ms", "vs r50 same path",
                     "vs r50 eager_cg", "paper", "verified"],
                    [[r["model"], r["path"], r["precision"], r["batch"], r["mode"], f"{r['images_per_second']:.1f}",
                      f"{r['p50_ms']:.2f}", _x(r["speed_vs_r50_same_path"]), _x(r["speed_vs_r50_eager_cg"]),
                      _x(r["paper_speed_vs_r50"]), "yes" if r.get("verified", True) else "NO"]
                     for r in result["rows"]]) + [""]
    if result.get("errors"):
        lines += ["Errors: " + "; ".join(result["errors"]), ""]
    return "\n".join(lines)


def _profile_lines(profile: dict) -> list[str]:
    if not profile:
        return []
    entries = list(profile.values())
    kinds = sorted({k for e in entries for k in (e.get("ms_per_iteration") or {})})
    header = ["kernel kind (ms per batch)"] + [f"{e['model']} {e['path']} ({e['role']})" for e in entries]
    rows = [[kind] + [f"{(e.get('ms_per_iteration') or {}).get(kind, 0.0):.2f}" for e in entries] for kind in kinds]
    rows.append(["total"] + [f"{e.get('total_ms', 0.0):.2f}" if "error" not in e else e["error"] for e in entries])
    return ["## Where the device time goes: r50 vs r50_max, FP16, batch 256 (torch.profiler)", "",
            *_table(header, rows), ""]


def write_result(result: dict, json_path: Path | None, md_path: Path | None) -> None:
    """Write the result as JSON and markdown, atomically."""
    from pfdeploy._io import write_bytes_atomic, write_json_atomic

    if json_path is not None:
        write_json_atomic(json_path, result)
    if md_path is not None:
        write_bytes_atomic(md_path, markdown(result).encode())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options (shared with scripts/gpu_check.py)."""
    parser.add_argument("--quick", action="store_true",
                        help=f"re-run mode: {', '.join(QUICK['models'])}, fp16, batch 256 and 1, {QUICK['seconds']} s, "
                             f"budget {QUICK['budget']:.0f} s")
    parser.add_argument("--seconds", type=float,
                        help="measuring time per model, path, mode and batch (default 0.5, --quick 0.3)")
    parser.add_argument("--budget", type=float,
                        help="hard time budget in seconds (bench_gpu.py: of the benchmark, default 420; "
                             "gpu_check.py: of the whole check, default 480, --quick 240)")
    parser.add_argument("--models", help="comma-separated registered models (r50 is the baseline)")
    parser.add_argument("--paths", help=f"comma-separated subset of {','.join(PATHS)}")
    parser.add_argument("--precisions", help="comma-separated subset of fp16,fp32")
    parser.add_argument("--batches", help="comma-separated batch sizes (default 256,1)")
    parser.add_argument("--compile-mode", choices=["default", "reduce-overhead", "max-autotune",
                                                   "max-autotune-no-cudagraphs"],
                        help="torch.compile mode of every group (default: max-autotune for FP16 batch 256, "
                             "reduce-overhead for the others)")


def settings_from_args(args) -> Settings:
    """Settings from parsed `add_arguments` options."""
    split = lambda text: None if not text else [t.strip() for t in text.split(",") if t.strip()]  # noqa: E731
    batches = split(args.batches)
    batches = None if batches is None else [int(b) for b in batches]
    return settings_for(args.quick, models=split(args.models), paths=split(args.paths),
                        precisions=split(args.precisions), batches=batches,
                        seconds=args.seconds, budget=args.budget, compile_mode=args.compile_mode,
                        compile_mode_rest=args.compile_mode)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--json", type=Path, help="write the result JSON here")
    parser.add_argument("--markdown", type=Path, help="write the markdown here")
    parser.add_argument("--run-id", help=argparse.SUPPRESS)  # scripts/gpu_check.py: which run wrote the files
    parser.add_argument("--command", help=argparse.SUPPRESS)  # scripts/gpu_check.py: the command to record
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        print(f"bench_gpu: error: {exc}", file=sys.stderr)
        return 2
    import torch

    if not torch.cuda.is_available():
        print("bench_gpu: error: no CUDA GPU visible to PyTorch; run on a GPU machine", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="[gpu-check] %(message)s", stream=sys.stdout)
    logging.getLogger("pfdeploy.export.pt2").setLevel(logging.ERROR)  # "RANDOM weights": known, stated in the doc
    result = new_result(settings, args.command or "")
    result["run_id"] = args.run_id
    result = run_benchmark(settings, result=result, say=lambda text: print(text, flush=True),
                           on_progress=lambda r: write_result(r, args.json, args.markdown))
    write_result(result, args.json, args.markdown)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
