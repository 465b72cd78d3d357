"""OpenVINO backend: an ONNX file compiled for the CPU by OpenVINO behind the Session interface.

    with load("r50_hybrid.int8.onnx", backend="openvino") as session:   # INT8 Q/DQ graph -> INT8 kernels
        logits = session(batch)

- **Precision.** `precision="fp32"` (default) or `"bf16"` sets OpenVINO's INFERENCE_PRECISION_HINT
  explicitly (f32 / bf16): on CPUs with AVX512-BF16 or AMX OpenVINO would otherwise compute FP32
  graphs in BF16 by default. BF16 on a CPU without them is refused in one line (OpenVINO would
  silently run f32), and a hint the compiled model does not report back is an error, never a
  silent fallback. An INT8 Q/DQ graph (pfdeploy quantize) runs its convolutions, pools and
  matrix products in INT8 through OpenVINO's low-precision transformations whatever the hint,
  which then applies to the layers left in float; `int8_layers(session.compiled_model)` lists them.
- **Threads and streams.** INFERENCE_NUM_THREADS = `intra_op_threads` (default: the cores
  available to this process, like the onnxruntime backend) and PERFORMANCE_HINT = LATENCY: one
  stream that uses every thread on each call, which is what a caller running one batch at a time
  needs (THROUGHPUT splits the cores into streams, so a single synchronous call uses only part of
  them).
- **Thread-safety.** An OpenVINO InferRequest must not be used by two threads at once. Each call
  takes a request from a pool (a new one is made when every request is busy) and returns it
  afterwards, so the session may be called from several threads; with one stream, OpenVINO
  runs concurrent calls one after the other.
- **Zero copy.** A C-contiguous, writable NumPy array (or CPU torch tensor) is wrapped as the
  input tensor without a copy (`ov.Tensor(array, shared_memory=True)`); other arrays are copied
  once. The logits are copied out of the request before it goes back to the pool.
- **Signals.** Compiling and inference run with SIGINT and SIGTERM held (`pfdeploy._signals`): they are
  delivered when the call returns, never inside OpenVINO's JIT kernels, and OpenVINO's worker threads
  never take them.
- **One Core per process.** Every session compiles through the same `ov.Core` (`shared_core()`), kept
  until the interpreter exits. OpenVINO's CPU plugin gives the thread that creates a Core a signal stack
  of its own (`sigaltstack`, for AMX's larger signal frames) and, when that Core is destroyed, restores
  the previous one only if its own is still the current one, then unmaps it. Two Cores released in the
  order they were made (sessions closed first-opened first) therefore leave the thread on an unmapped
  signal stack, and the next signal Python handles there (Ctrl-C, SIGTERM: CPython installs its handlers
  with SA_ONSTACK) kills the process with SIGSEGV. One Core that lives as long as the process cannot be
  released out of order.
- **Batch.** A dynamic ONNX batch stays dynamic in OpenVINO (reshaped to `?` if the frontend fixed
  it); a fixed batch is kept and enforced by `input_spec`.

The file is read with `pfdeploy._onnxfile.load_onnx` first (the one ONNX loader: missing, damaged
or non-ONNX files get their line before OpenVINO sees them), which also gives the metadata.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from pfdeploy._signals import deferred_signals
from pfdeploy.errors import MissingDependencyError, PfdeployError
from pfdeploy.runtime.session import Session, onnx_input_spec

log = logging.getLogger(__name__)

#: pfdeploy precision -> OpenVINO INFERENCE_PRECISION_HINT.
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}
PERFORMANCE_HINT = "LATENCY"
INSTALL = "pip install 'pfdeploy[openvino]'"
#: OpenVINO CPU layer types that do the arithmetic (what "runs in INT8" is judged on).
COMPUTE_LAYERS = ("Convolution", "FullyConnected", "MatMul", "Pooling", "Eltwise", "GroupConvolution")


def import_openvino():
    """The openvino module, or a one-line MissingDependencyError naming the extra to install."""
    try:
        with deferred_signals():  # threads started by the import inherit the mask (pfdeploy._signals)
            import openvino
    except ImportError as exc:
        raise MissingDependencyError(f"the openvino backend needs OpenVINO; {INSTALL}") from exc
    return openvino


_CORE_LOCK = threading.Lock()
_CORE: list = []  # the process's one ov.Core, made on first use (see "One Core per process")


def shared_core():
    """The one `openvino.Core` every pfdeploy session uses, made on first call and kept until the process
    exits (a Core per session crashes the process on the next signal when sessions close out of order)."""
    with _CORE_LOCK:
        if not _CORE:
            ov = import_openvino()
            with deferred_signals():  # OpenVINO's worker threads start here and inherit the mask
                _CORE.append(ov.Core())
        return _CORE[0]


def compile_config(precision: str = "fp32", intra_op_threads: int | None = None) -> dict[str, Any]:
    """The CPU properties pfdeploy compiles with: precision hint, LATENCY, thread count.

    Refuses an unknown precision, a non-positive thread count, and bf16 on a CPU without
    AVX512-BF16 or AMX (pfdeploy._cpu.has_bf16).
    """
    from pfdeploy._cpu import cpu_summary, has_bf16
    from pfdeploy.runtime.ort_options import physical_cores

    if precision not in PRECISION_HINTS:
        raise PfdeployError(f"precision {precision!r}: the openvino backend computes "
                            f"{' or '.join(PRECISION_HINTS)}")
    if precision == "bf16" and not has_bf16():
        raise PfdeployError(f"precision bf16 needs a CPU with AVX512-BF16 or AMX, and this one has neither "
                            f"({cpu_summary()}); use precision fp32 or an INT8 graph")
    if intra_op_threads is not None and (not isinstance(intra_op_threads, int) or intra_op_threads < 1):
        raise PfdeployError(f"intra_op_threads must be a positive integer, got {intra_op_threads!r}")
    return {
        "INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision],
        "PERFORMANCE_HINT": PERFORMANCE_HINT,
        "INFERENCE_NUM_THREADS": intra_op_threads or physical_cores(),
    }


def _check_honoured(compiled, config: dict[str, Any], path: Path) -> None:
    """Raise if OpenVINO compiled with another precision or thread count than asked (no silent fallback)."""
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    got = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint).lower()
    want = config["INFERENCE_PRECISION_HINT"]
    if got != want:
        raise PfdeployError(f"OpenVINO compiled {path} with inference precision {got}, not {want}: this CPU "
                            "cannot run it; use precision fp32")
    threads = int(compiled.get_property("INFERENCE_NUM_THREADS"))
    if threads != config["INFERENCE_NUM_THREADS"]:
        log.info("OpenVINO uses %d threads (asked %d)", threads, config["INFERENCE_NUM_THREADS"])


def compiled_for_cpu(core, ov_model, config: dict[str, Any], path: Path):
    """`ov_model` compiled for the CPU with `config` (compile_config), checked to honour its precision hint."""
    compiled = core.compile_model(ov_model, "CPU", config)
    _check_honoured(compiled, config, path)
    return compiled


def read_model_for_cpu(core, path: Path, model):
    """OpenVINO's model of the ONNX file `path` (`model`: its graph). A Q/DQ graph with ReLUs goes in
    re-encoded for x86 (`pfdeploy.calibration.qdq.openvino_graph_from_qdq`: the same quantization
    grid, post-ReLU activations u8 instead of s8), so its convolutions run as fast as NNCF's.

    A graph OpenVINO's ONNX frontend cannot read (an undefined node input, an op it lacks) is one
    PfdeployError line with OpenVINO's explanation, as ONNX Runtime's refusals are. The file passes
    onnx.checker first: OpenVINO's frontend crashes the process (SIGSEGV) on some malformed graphs, such as
    a Conv node with one input, which the checker refuses."""
    import io

    from pfdeploy._onnxfile import checker_problem
    from pfdeploy.calibration.qdq import openvino_graph_from_qdq

    problem = checker_problem(model)
    if problem:
        raise PfdeployError(f"{path} is not a valid ONNX graph ({problem}); OpenVINO is not given it: re-export it "
                            "with `pfdeploy export`")
    reencoded = openvino_graph_from_qdq(model)
    try:
        if reencoded is None:
            return core.read_model(str(path))
        log.debug("%s: read re-encoded for x86 (u8 activations after ReLU)", path)
        return core.read_model(io.BytesIO(reencoded.SerializeToString()))
    except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses on a graph it cannot read
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = ": ".join(line for line in lines if not line.startswith(("Check ", "Exception from ")))
        raise PfdeployError(f"OpenVINO cannot read {path} ({reason[:240] or type(exc).__name__}); check the graph "
                            "with `pfdeploy info --onnx FILE`, or re-export it with `pfdeploy export`") from None


def _keep_batch_dynamic(ov_model, dynamic: bool) -> None:
    """Make axis 0 of the input dynamic when the ONNX batch is (OpenVINO usually keeps it so)."""
    port = ov_model.inputs[0]
    shape = port.get_partial_shape()
    if dynamic and shape.rank.is_static and shape[0].is_static:
        import openvino as ov

        ov_model.reshape({port.get_any_name(): ov.PartialShape([-1, *[d.get_length() for d in shape][1:]])})


def layer_precisions(compiled) -> Counter:
    """Counter of (layer type, runtime precision) over the compiled model's execution graph."""
    counts: Counter = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
        counts[(layer, precision)] += 1
    return counts


def int8_layers(compiled) -> dict[str, dict[str, int]]:
    """{"int8": {layer type: n}, "float": {...}}: the compute layers OpenVINO runs in u8/i8 and in float."""
    out: dict[str, Counter] = {"int8": Counter(), "float": Counter()}
    for (layer, precision), n in layer_precisions(compiled).items():
        if layer in COMPUTE_LAYERS:
            out["int8" if precision in ("u8", "i8") else "float"][layer] += n
    return {k: dict(v) for k, v in out.items()}


class OpenVinoSession(Session):
    """Runs an ONNX file with OpenVINO on the CPU; logits come back as float32 NumPy."""

    backend = "openvino"
    thread_safe = True  # a pool of infer requests, one per concurrent call

    def __init__(self, path: str | Path, *, device: str = "cpu", precision: str = "fp32",
                 intra_op_threads: int | None = None):
        from pfdeploy._onnxfile import load_onnx

        if device != "cpu":
            raise PfdeployError(f"the openvino backend runs on the CPU, not {device!r}; use device='cpu'")
        path = Path(path)
        if path.suffix.lower() != ".onnx":
            raise PfdeployError(f"the openvino backend runs .onnx files, not {path}")
        config = compile_config(precision, intra_op_threads)
        ov = import_openvino()
        model = load_onnx(path, external_data=False)  # refuses missing/damaged files in one line
        spec, metadata = onnx_input_spec(model, path)  # the same InputSpec the onnxruntime backend gives
        with deferred_signals():  # OpenVINO's worker threads start here and inherit the mask
            core = shared_core()
            ov_model = read_model_for_cpu(core, path, model)
            _keep_batch_dynamic(ov_model, spec.max_batch is None)  # a fixed batch stays fixed
            self._compiled = compiled_for_cpu(core, ov_model, config, path)
            first_request = self._compiled.create_infer_request()
        super().__init__(spec, metadata, device)
        self.path = path
        self.compute_precision = precision
        self.config = config
        self._ov = ov
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._requests.put(first_request)
        log.debug("openvino session on %s with %s", path, config)

    @property
    def compiled_model(self):
        """The underlying openvino.CompiledModel (for direct calls, comparisons and inspection)."""
        return self._compiled

    @property
    def precision(self) -> str:
        """The artifact's precision, or bf16 when a float graph is computed in BF16 (INT8 stays int8)."""
        from pfdeploy.runtime.verify import verified_precision

        return verified_precision(self.metadata.get("pfdeploy.precision", "fp32"), self.compute_precision)

    @contextmanager
    def _request(self):
        try:
            request = self._requests.get_nowait()
        except queue.Empty:  # every request is busy in another thread
            with deferred_signals():
                request = self._compiled.create_infer_request()
        try:
            yield request
        finally:
            self._requests.put(request)

    def _run(self, array: np.ndarray) -> np.ndarray:
        if not (array.flags.c_contiguous and array.flags.writeable):
            array = np.array(array, order="C")  # OpenVINO shares only contiguous, writable memory
        tensor = self._ov.Tensor(array, shared_memory=True)
        with self._request() as request:
            request.set_input_tensor(tensor)
            with deferred_signals():  # no signal lands inside OpenVINO's JIT kernels (pfdeploy._signals)
                request.infer()
            out = request.get_output_tensor(0).data
            return out.astype(np.float32) if out.dtype != np.float32 else out.copy()

    def _release(self) -> None:
        self._requests = queue.SimpleQueue()
        self._compiled = None
