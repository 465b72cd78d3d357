"""ONNX Runtime sessions with throughput-tuned options.

What matters on CPU (measured in docs/benchmarks.md): full graph optimization (ORT fuses the
erf-GELU, LayerNorm, MatMul+Add and Conv+activation patterns at load time), one intra-op thread
per physical core, sequential execution (these graphs are chains), and memory-pattern planning
for fixed shapes. On the CPU, each exported multi-head attention subgraph is also rewritten in
memory into ONNX Runtime's contrib `Attention` op (`attention_fused_for_cpu`); the ONNX file on
disk stays standard ONNX for TensorRT and other runtimes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pfdeploy.errors import MissingDependencyError, PfdeployError

log = logging.getLogger(__name__)

DEVICE_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def physical_cores() -> int:
    """Cores available to this process (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def session_options(intra_op_threads: int | None = None, optimized_model_path: str | None = None,
                    profile_prefix: str | None = None):
    """The SessionOptions pfdeploy uses: ORT_ENABLE_ALL, sequential, threads = cores, no spinning wait."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = intra_op_threads or physical_cores()
    opts.inter_op_num_threads = 1
    opts.enable_mem_pattern = True
    opts.enable_cpu_mem_arena = True
    opts.log_severity_level = 3
    if optimized_model_path:
        opts.optimized_model_filepath = optimized_model_path
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return opts


def ort_session_from_onnx(path: str | Path, *, device: str = "cpu", intra_op_threads: int | None = None,
                          providers: list | None = None, fuse_attention: bool = True, model=None,
                          **option_kwargs):
    """An onnxruntime.InferenceSession for `path` on `device` ('cpu', 'cuda', 'tensorrt').

    On the CPU execution provider, `fuse_attention` loads the graph with its attention blocks
    rewritten into ONNX Runtime's `Attention` kernel (`attention_fused_for_cpu`; the file is not
    changed). `model`: the file's ModelProto when the caller already loaded it with
    `pfdeploy._onnxfile.load_onnx`: the file is not read again, and the fusion rewrites `model` in place.

    Refuses (MissingDependencyError) a device whose execution provider this onnxruntime lacks
    rather than silently running on the CPU.
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - runtime dependency
        raise MissingDependencyError("onnxruntime is not installed; pip install onnxruntime") from exc
    from pfdeploy._onnxfile import load_onnx

    path = Path(path)
    if model is None:
        model = load_onnx(path)  # refuses missing, unreadable, truncated and damaged files in one line
    if providers is None:
        if device not in DEVICE_PROVIDERS:
            raise PfdeployError(f"unknown device {device!r}; use one of {', '.join(DEVICE_PROVIDERS)}")
        providers = DEVICE_PROVIDERS[device]
        available = ort.get_available_providers()
        if providers[0] not in available:
            raise MissingDependencyError(
                f"onnxruntime has no {providers[0]} (available: {', '.join(available)}); "
                "install onnxruntime-gpu on a GPU machine or use device='cpu'"
            )
    opts = session_options(intra_op_threads, **option_kwargs)
    source: str | bytes = str(path)
    if fuse_attention and providers[0] == "CPUExecutionProvider":
        source = _attention_fused_bytes(model) or source
    try:
        return ort.InferenceSession(source, sess_options=opts, providers=providers)
    except _ort_load_errors() as exc:
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise PfdeployError(f"ONNX Runtime cannot load {path}: {reason}") from exc


def _ort_load_errors() -> tuple[type[Exception], ...]:
    """The exceptions onnxruntime raises for a graph it cannot load (its own classes, not RuntimeError)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidGraph", "InvalidProtobuf", "InvalidArgument", "NotImplemented", "NoSuchFile")
    return tuple(getattr(state, name) for name in names if hasattr(state, name))


def _attention_fused_bytes(model) -> bytes | None:
    """`model` with its attention subgraphs fused, serialized; None when none matched."""
    if model.ByteSize() >= 2**31 - 2**20 or attention_fused_for_cpu(model) == 0:
        return None
    return model.SerializeToString()


def _constant_values(graph) -> dict:
    """name -> numpy value of every initializer and Constant node output."""
    from onnx import numpy_helper

    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _match_attention(softmax, producer: dict, consumers: dict, const: dict):
    """The nodes and parameters of one exported attention block around `softmax`, or None.

    The pattern is what pfdeploy.models.layers.Attention exports: MatMul(x, W) -> Add(bias) ->
    Reshape(-1, T, 3, H, Dh) -> Transpose(2, 0, 3, 1, 4) -> Slice/Squeeze q, k, v ->
    MatMul(q * scale, Transpose(k)) -> Softmax -> MatMul(., v) -> Transpose(0, 2, 1, 3) ->
    Reshape(-1, T, H * Dh).
    """
    import numpy as np

    def node_of(name, op):
        node = producer.get(name)
        return node if node is not None and node.op_type == op else None

    def perm(node):
        return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)

    def only_consumer(node, op):
        users = consumers.get(node.output[0], [])
        return users[0] if len(users) == 1 and users[0].op_type == op else None

    scores = node_of(softmax.input[0], "MatMul")
    scaled = scores and node_of(scores.input[0], "Mul")
    k_t = scores and node_of(scores.input[1], "Transpose")
    context = only_consumer(softmax, "MatMul")
    if not (scaled and k_t and context and perm(k_t) == [0, 1, 3, 2] and scaled.input[1] in const):
        return None
    merge = only_consumer(context, "Transpose")
    out = merge and only_consumer(merge, "Reshape")
    if not (out and perm(merge) == [0, 2, 1, 3] and out.input[1] in const):
        return None
    picks = []
    for name in (scaled.input[0], k_t.input[0], context.input[1]):
        squeeze = node_of(name, "Squeeze")
        slice_ = squeeze and node_of(squeeze.input[0], "Slice")
        if not slice_ or len(slice_.input) < 4 or any(n not in const for n in slice_.input[1:4]):
            return None
        start, end, axis = (int(np.asarray(const[n]).reshape(-1)[0]) for n in slice_.input[1:4])
        picks.append((squeeze, slice_, start, end, axis))
    if [(p[2], p[3], p[4]) for p in picks] != [(0, 1, 0), (1, 2, 0), (2, 3, 0)]:
        return None
    split = node_of(picks[0][1].input[0], "Transpose")
    if not split or any(p[1].input[0] != split.output[0] for p in picks) or perm(split) != [2, 0, 3, 1, 4]:
        return None
    heads = node_of(split.input[0], "Reshape")
    bias = heads and node_of(heads.input[0], "Add")
    proj = bias and node_of(bias.input[0], "MatMul")
    if not (proj and heads.input[1] in const and bias.input[1] in const and proj.input[1] in const):
        return None
    weight, bias_value = const[proj.input[1]], const[bias.input[1]]
    shape = [int(v) for v in np.asarray(const[heads.input[1]]).reshape(-1)]
    out_shape = [int(v) for v in np.asarray(const[out.input[1]]).reshape(-1)]
    scale = np.asarray(const[scaled.input[1]])
    if (weight.dtype != np.float32 or weight.ndim != 2 or len(shape) != 5 or shape[0] not in (-1, 0)
            or shape[2] != 3 or weight.shape[1] != 3 * shape[3] * shape[4] or bias_value.shape != (weight.shape[1],)
            or out_shape[1:] != [shape[1], shape[3] * shape[4]] or scale.size != 1):
        return None
    nodes = [proj, bias, heads, split, *(n for p in picks for n in p[:2]), scaled, k_t, scores, softmax,
             context, merge, out]
    return nodes, {"num_heads": shape[3], "scale": float(scale.reshape(-1)[0])}


def attention_fused_for_cpu(model) -> int:
    """Rewrite each exported multi-head attention block of `model` (an onnx.ModelProto, in place)
    into one `com.microsoft.Attention` node, ONNX Runtime's CPU kernel; returns how many.

    Same math (QKV projection with bias, softmax(q k^T * scale) v, heads merged), one kernel
    instead of ~16 nodes and their Transpose/Split copies. ONNX Runtime-specific: only for sessions,
    never written into an exported artifact. Blocks whose intermediate values are used elsewhere
    are left alone.
    """
    from onnx import helper

    from pfdeploy._onnxgraph import consumers as users_of
    from pfdeploy._onnxgraph import producers

    graph = model.graph
    producer, consumers = producers(graph), users_of(graph)
    graph_outputs = {o.name for o in graph.output}
    const = _constant_values(graph)
    removed, fused = set(), {}
    for softmax in [n for n in graph.node if n.op_type == "Softmax"]:
        match = _match_attention(softmax, producer, consumers, const)
        if match is None:
            continue
        nodes, attrs = match
        inside = {id(n) for n in nodes}
        internal = [o for n in nodes[:-1] for o in n.output]
        if any(o in graph_outputs or any(id(c) not in inside for c in consumers.get(o, ())) for o in internal):
            continue
        proj, bias, out = nodes[0], nodes[1], nodes[-1]
        fused[id(proj)] = helper.make_node(
            "Attention", [proj.input[0], proj.input[1], bias.input[1]], [out.output[0]],
            name=f"{out.name or out.output[0]}_attention", domain="com.microsoft", **attrs)
        removed |= inside
    if not fused:
        return 0
    kept = [fused.get(id(n), n) for n in graph.node if id(n) not in removed or id(n) in fused]
    del graph.node[:]
    graph.node.extend(kept)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    log.debug("fused %d attention blocks into com.microsoft.Attention", len(fused))
    return len(fused)
