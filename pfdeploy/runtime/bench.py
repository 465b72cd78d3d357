"""Benchmark sessions side by side: interleaved calls, per-call latency percentiles, img/s.

JSON schema (`SCHEMA` = "pfdeploy.bench/1"), as returned by `benchmark` and written by
`pfdeploy bench --json`:

    {
      "schema": "pfdeploy.bench/1",
      "created": ISO-8601 UTC time,
      "environment": {"pfdeploy", "python", "numpy", "torch", "onnxruntime", "openvino", "platform",
                      "cpu", "cpu_flags" (notable instruction sets), "cpu_count", "gpu" (name or null)},
      "settings": {"batches": [int], "seconds": float, "warmup": int, "interleaved": true},
      "targets": [{"label", "target", "backend", "device", "precision", "model", "input": InputSpec}],
      "results": [{"label", "batch", "mode", "calls", "images_per_second",
                   "latency_ms": {"mean", "median", "p50", "p90", "p99"}}
                  | {"label", "batch", "mode", "skipped": reason}]
    }

Batch sizes are bounded before any work: each is at most MAX_BATCH (pfdeploy.limits: a dynamic batch is
declared as 1..MAX_BATCH), a batch outside one artifact's declared range is skipped for it (with the
reason), and a batch whose estimated memory (`bytes_per_image`, summed over the open targets) exceeds
the memory available is refused before anything is timed.

`mode` is "end_to_end" (host array in, host logits out: what an application gets) or, for GPU
sessions, also "device" (input already on the device, output left there, synchronized: compute
only). All targets and modes of one batch size are timed in the same rounds, in a rotating order,
so machine noise hits them alike. In each round a workload runs a short block of consecutive calls
(about BLOCK_SECONDS, at least two); the first call of a block is not counted, because switching
between models evicts the previous one's weights from the caches, which a deployment running
one model does not pay. `images_per_second` is batch / mean counted call time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from pfdeploy._cpu import cpu_name, notable_flags
from pfdeploy._text import positive_ints, text_table
from pfdeploy.errors import MissingDependencyError, PfdeployError
from pfdeploy.limits import MAX_BATCH
from pfdeploy.runtime.session import Session
from pfdeploy.runtime.timing import latency_stats, time_interleaved

log = logging.getLogger(__name__)

SCHEMA = "pfdeploy.bench/1"
MIN_ROUNDS, MAX_ROUNDS = 5, 100_000
BLOCK_SECONDS = 0.05  # consecutive calls of one workload per round
TABLE_COLUMNS = ("target", "backend", "device", "precision", "batch", "mode", "img/s", "p50 ms", "p90 ms",
                 "p99 ms")


def environment() -> dict[str, Any]:
    """Versions and hardware the numbers were measured on."""
    from pfdeploy import __version__

    env: dict[str, Any] = {
        "pfdeploy": __version__, "python": platform.python_version(), "numpy": np.__version__,
        "platform": platform.platform(), "cpu": cpu_name(), "cpu_flags": notable_flags(),
        "cpu_count": os.cpu_count(), "gpu": None,
    }
    for name in ("torch", "onnxruntime", "openvino"):
        module = sys.modules.get(name)
        env[name] = getattr(module, "__version__", None) if module else None
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def _label(target: Any, index: int) -> str:
    if isinstance(target, (str, Path)):
        return str(target)
    if isinstance(target, tuple):
        return str(target[0])
    return f"session{index}"


def open_targets(targets: Sequence[Any], backend: str = "auto", device: str | None = None,
                 **options: Any) -> dict[str, Session]:
    """{label: Session} for paths/model names (opened with `load`), Sessions, or (label, Session)."""
    from pfdeploy.runtime import load

    sessions: dict[str, Session] = {}
    for index, target in enumerate(targets):
        label = _label(target, index)
        if label in sessions:
            label = f"{label}#{index}"
        if isinstance(target, tuple):
            sessions[label] = target[1]
        elif isinstance(target, Session):
            sessions[label] = target
        else:
            sessions[label] = load(target, backend=backend, device=device, **options)
    return sessions


def _batch_problem(session: Session, batch: int) -> str | None:
    spec = session.input_spec
    top = MAX_BATCH if spec.max_batch is None else spec.max_batch  # a dynamic batch is declared 1..MAX_BATCH
    if not spec.min_batch <= batch <= top:
        return f"batch {batch} is outside the artifact's batch range {spec.min_batch}..{top}"
    return None


# --- batch bounds: declared sizes and memory, checked before any work --------------------------------


def check_batches(batches, what: str = "batch size", example: str = "1,8,32") -> tuple[int, ...]:
    """Positive integers of at most MAX_BATCH (the largest batch a pfdeploy artifact declares), or one
    PfdeployError line naming the option `what`."""
    values = positive_ints(batches, what, example)
    over = [b for b in values if b > MAX_BATCH]
    if over:
        raise PfdeployError(f"{what} {over[0]} is over the largest batch pfdeploy runs, {MAX_BATCH} (a dynamic "
                            f"batch is declared as 1..{MAX_BATCH}); use smaller batch sizes")
    return values


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (MemAvailable of /proc/meminfo; free pages elsewhere),
    or None when this system does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _tensor_bytes(tensor_type, batch_dim) -> int | None:
    """Bytes per image of a tensor whose first dimension is the batch `batch_dim`, else None."""
    import onnx

    dims = list(tensor_type.shape.dim)
    if not dims or not tensor_type.elem_type:
        return None
    first = dims[0].dim_param or dims[0].dim_value
    if first != batch_dim or not all(d.HasField("dim_value") for d in dims[1:]):
        return None
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).itemsize
    return int(math.prod(d.dim_value for d in dims[1:])) * itemsize


def onnx_bytes_per_image(path) -> int:
    """A lower bound of the memory one image of a batch needs in an ONNX graph: the largest sum, over
    nodes, of the per-image bytes of the batched tensors a node reads and writes at once (types from ONNX
    shape inference; weights are not per image). A batch of N needs at least N times this."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - an estimate: without inferred shapes, count the graph's IO only
        pass
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    if not inputs or not inputs[0].type.tensor_type.shape.dim:
        return 0
    first = inputs[0].type.tensor_type.shape.dim[0]
    batch_dim = first.dim_param or first.dim_value
    sizes = {}
    for value in [*graph.input, *graph.output, *graph.value_info]:
        size = _tensor_bytes(value.type.tensor_type, batch_dim)
        if size is not None:
            sizes[value.name] = size
    per_node = [sum(sizes.get(n, 0) for n in {*node.input, *node.output}) for node in graph.node]
    io = sum(sizes.get(v.name, 0) for v in [*inputs, *graph.output])
    return max([io, *per_node])


def model_bytes_per_image(name: str, overrides: dict | None = None) -> int:
    """The same lower bound for a registered model in PyTorch, without weights (built on the meta
    device): the largest input + output bytes of one layer, per image, at the model's image size."""
    import torch

    from pfdeploy.models import create_model

    with torch.device("meta"):
        model = create_model(name, **(overrides or {}))
    size = int(model.img_size)
    largest = 0

    def hook(_module, inputs, output) -> None:
        nonlocal largest
        tensors = [t for t in (*inputs, output) if isinstance(t, torch.Tensor)]
        largest = max(largest, sum(t.numel() * t.element_size() for t in tensors))

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model.eval()(torch.empty(1, 3, size, size, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return max(largest, 3 * size * size * 4)


def bytes_per_image(session: Session) -> int:
    """Host memory one image of a batch needs in `session` (a lower bound): an ONNX graph's activations
    (onnx_bytes_per_image) for sessions run on the CPU from an .onnx file, a registered model's for
    torch CPU sessions, else just the input (GPU sessions keep activations in device memory; a
    TensorRT session allocated its buffers for the profile's max batch when it opened)."""
    spec = session.input_spec
    image = int(math.prod(int(d) for d in spec.shape[1:])) * np.dtype(spec.dtype).itemsize
    if session.device != "cpu":
        return 0 if session.backend == "tensorrt" else image
    path = getattr(session, "path", None)
    if path is not None and str(path).lower().endswith(".onnx"):
        return max(image, onnx_bytes_per_image(path))
    model = session.metadata.get("pfdeploy.model")
    if session.backend == "torch" and model:
        from pfdeploy.models import list_models

        if model in list_models():
            try:
                overrides = json.loads(session.metadata.get("pfdeploy.overrides") or "{}")
            except ValueError:
                overrides = {}
            if isinstance(overrides, dict):
                return max(image, model_bytes_per_image(model, overrides))
    return image


def check_memory(batch: int, per_image: int, what: str = "batch") -> None:
    """Refuse (one line) a batch whose estimated memory, `batch` x `per_image` bytes, exceeds the memory
    available: it could only end in swapping or the out-of-memory killer."""
    available = available_memory()
    need = batch * per_image
    if available is not None and need > available:
        raise PfdeployError(f"{what} {batch} needs at least {need / 1e6:.1f} MB ({per_image / 1e6:.3f} MB per "
                            f"image, estimated from the input and activation sizes) but {available / 1e6:.1f} MB "
                            "are available; use a smaller batch or free memory")


def _estimate_seconds(fn: Callable[[], object], warmup: int) -> float:
    """Run `warmup` calls (at least 2) and return the fastest later call's time."""
    times = []
    for _ in range(max(2, warmup)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times[1:])


def rounds_for(per_call: Sequence[float], seconds: float) -> int:
    """Rounds so that each workload gets about `seconds` in total (clamped to a sane range)."""
    mean = sum(per_call) / len(per_call)
    return int(min(MAX_ROUNDS, max(MIN_ROUNDS, math.ceil(seconds / max(mean, 1e-9)))))


def block_of(fn: Callable[[], object], calls: int, sink: list[float]) -> Callable[[], None]:
    """A workload running `fn` `calls` times in a row, appending the time of every call but the
    first (the one that re-warms the caches after another workload) to `sink`."""

    def run() -> None:
        for index in range(calls):
            start = time.perf_counter()
            fn()
            if index:
                sink.append(time.perf_counter() - start)

    return run


def _workloads(sessions: dict[str, Session], batch: int, seed: int) -> tuple[dict, list[dict]]:
    workloads: dict[tuple[str, str], Callable[[], object]] = {}
    skipped: list[dict] = []
    for label, session in sessions.items():
        problem = _batch_problem(session, batch)
        if problem:
            skipped.append({"label": label, "batch": batch, "mode": "end_to_end", "skipped": problem})
            continue
        x = session.input_spec.example(batch, seed)
        workloads[(label, "end_to_end")] = lambda s=session, x=x: s(x)
        device_fn = session.device_fn(x)
        if device_fn is not None:
            workloads[(label, "device")] = device_fn
    return workloads, skipped


def benchmark_batch(sessions: dict[str, Session], batch: int, seconds: float, warmup: int,
                    seed: int = 0) -> list[dict]:
    """Result entries of every session (and mode) at one batch size, timed interleaved."""
    workloads, results = _workloads(sessions, batch, seed)
    if not workloads:
        return results
    per_call = [_estimate_seconds(fn, warmup) for fn in workloads.values()]
    calls = [max(2, math.ceil(BLOCK_SECONDS / max(t, 1e-9))) for t in per_call]
    rounds = rounds_for([t * (n - 1) for t, n in zip(per_call, calls, strict=True)], seconds)
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in workloads}
    named = {f"{label}|{mode}": block_of(fn, n, samples[(label, mode)])
             for ((label, mode), fn), n in zip(workloads.items(), calls, strict=True)}
    time_interleaved(named, rounds=rounds, min_seconds=0.0, warmup=0)
    for (label, mode), values in samples.items():
        stats = latency_stats(values)
        mean = float(np.mean(values))
        results.append({
            "label": label, "batch": batch, "mode": mode, "calls": len(values),
            "images_per_second": batch / mean,
            "latency_ms": {"mean": mean * 1e3, "median": stats["median_ms"], "p50": stats["p50_ms"],
                           "p90": stats["p90_ms"], "p99": stats["p99_ms"]},
        })
    return results


def benchmark(targets: Sequence[Any], batches: Sequence[int] = (1, 8, 32), seconds: float = 2.0,
              warmup: int = 3, *, backend: str = "auto", device: str | None = None, seed: int = 0,
              **options: Any) -> dict[str, Any]:
    """Benchmark several targets side by side and return the documented JSON dict (see module doc).

    targets: artifact paths / model names (opened with `load(backend, device, **options)`),
    Sessions, or (label, Session) pairs. seconds: measuring time per target, mode and batch size.
    Sessions opened here are closed before returning.
    """
    if not targets:
        raise PfdeployError("bench needs at least one target (an .onnx/.plan file or a model name)")
    batches = check_batches(batches)
    if seconds <= 0:
        raise PfdeployError(f"--seconds must be positive, got {seconds}")
    sessions = open_targets(targets, backend, device, **options)
    owned = [s for t, s in zip(targets, sessions.values(), strict=True) if not isinstance(t, (Session, tuple))]
    try:
        per_image = {label: bytes_per_image(s) for label, s in sessions.items()}
        for batch in batches:  # every session holds its memory at once (they run interleaved)
            check_memory(batch, sum(n for label, n in per_image.items()
                                    if _batch_problem(sessions[label], batch) is None))
        results = []
        for batch in _progress([int(b) for b in batches]):
            log.info("batch %d: %d target(s), about %.1f s each", batch, len(sessions), seconds)
            results.extend(benchmark_batch(sessions, batch, seconds, warmup, seed))
        return {
            "schema": SCHEMA,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "environment": environment(),
            "settings": {"batches": [int(b) for b in batches], "seconds": seconds, "warmup": warmup,
                         "interleaved": True},
            "targets": [{"label": label, "target": label, **s.describe()} for label, s in sessions.items()],
            "results": results,
        }
    finally:
        for session in owned:
            session.close()


def _progress(items: list[int]):
    from tqdm import tqdm

    return tqdm(items, desc="bench", unit="batch size", disable=len(items) < 2 or not sys.stderr.isatty())


def table_from_results(report: dict[str, Any]) -> list[dict[str, str]]:
    """Rows for the terminal table, one per (target, batch, mode)."""
    info = {t["label"]: t for t in report["targets"]}
    rows = []
    for r in report["results"]:
        t = info[r["label"]]
        row = {"target": r["label"], "backend": t["backend"], "device": t["device"],
               "precision": t["precision"], "batch": str(r["batch"]), "mode": r["mode"]}
        if "skipped" in r:
            row["img/s"] = f"skipped: {r['skipped']}"
        else:
            lat = r["latency_ms"]
            row.update({"img/s": f"{r['images_per_second']:.1f}", "p50 ms": f"{lat['p50']:.2f}",
                        "p90 ms": f"{lat['p90']:.2f}", "p99 ms": f"{lat['p99']:.2f}"})
        rows.append(row)
    return rows


def format_table(report: dict[str, Any]) -> str:
    """Plain-text table of a benchmark report."""
    return text_table(table_from_results(report), TABLE_COLUMNS)


@contextlib.contextmanager
def _quiet_matplotlib():
    """Keep matplotlib's own log lines ("Matplotlib is building the font cache", "generated new
    fontManager" on a first run) out of the user's output while a plot is made."""
    logger = logging.getLogger("matplotlib")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def plot_throughput(report: dict[str, Any], path: str | Path) -> Path:
    """PNG of img/s vs batch size, one line per target and mode (needs matplotlib)."""
    with _quiet_matplotlib():
        return _plot_throughput(report, path)


def _plot_throughput(report: dict[str, Any], path: str | Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("--plot needs matplotlib; install it with `pip install "
                                     "'pfdeploy[plot]'`") from None
    from pfdeploy._io import atomic_path

    series: dict[str, list[tuple[int, float]]] = {}
    for r in report["results"]:
        if "skipped" not in r:
            series.setdefault(f"{r['label']} ({r['mode']})", []).append((r["batch"], r["images_per_second"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in series.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / second")
    env = report.get("environment", {})
    ax.set_title(f"pfdeploy bench on {env.get('gpu') or env.get('cpu', '?')}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(path)
