"""Where should pfdeploy's one INT8 Q/DQ graph put its Q/DQ pairs on ResNets, for OpenVINO and TensorRT?

An experiment, not part of benchmarks/run.py. For each of `--models` (default r50,r50_hybrid; 224x224,
seeded random weights) it calibrates once (pfdeploy's own calibration: 32 digit images, min-max,
RESNET_OPS), builds placement variants of pfdeploy's Q/DQ graph with pfdeploy's own `qdq_graph` (other
`float_outputs`) and a small post-pass below (`drop_qdq`: removes Q/DQ pairs behind chosen ops),
plus NNCF's peer (`nncf.quantize` of the FP32 model on the same images), and times them all through
OpenVINO, interleaved round by round (pfdeploy.runtime.timing) at batch 8, every graph compiled with
pfdeploy's openvino backend properties (compile_config("fp32")). Printed: img/s, each variant's
ratio to NNCF (median of per-round ratios), whether it passes pfdeploy.engines.trt_check with 0
violations, and where its Q/DQ pairs sit.

How a variant reaches OpenVINO (its `ov` column):
- `prod`: exactly today's INT8 OV path, pfdeploy.runtime.load(path, backend="openvino"), which reads the
  graph through qdq.openvino_graph_from_qdq (folds `Q -> DQ -> Relu -> Q` into an unsigned Quantize
  and re-encodes every other s8 activation as u8 with zero point 128);
- `fold`: `ov_reencode` below, a candidate replacement for openvino_graph_from_qdq: folds every
  `Relu -> Q(s8, zero point 0)` into `Q(u8, zero point 0)` whether or not a Q/DQ pair sits before
  the Relu, and leaves every other activation s8 with zero point 0 (symmetric, as NNCF's are);
- `fold-u8`: the same fold, other activations u8 with zero point 128 as qdq.cpu_graph_from_qdq
  writes them (what `prod` becomes if cpu_graph_from_qdq's ReLU fold learns the float-ReLU case).
All keep the quantization grid (scales) of the graph; a folded ReLU's top becomes 255*s instead of 127*s.

Timing: on these CPUs the target timed just before another can cost it ~10% (an onnxruntime
session before an OpenVINO one does: docs/benchmarks.md). Only OpenVINO targets are loaded here, and
the rounds are run `--orders` times (default 2), each pass in the reverse order of the last, on top
of `time_interleaved`'s own rotating, alternating order; the table gives the ratio over all rounds
and per order.

`--accuracy` adds the trained ResNet fixtures' top-1 (tests/fixtures/trained, r50_hybrid_digits) on
their held-out digits for every variant (calibrated on the fixture's 256 calibration images with
entropy, as bench_openvino does), next to FP32 and NNCF. `--layers` prints, per variant, OpenVINO's
runtime graph (layer type / runtime precision counts) and the per-layer execution types and times.

    flock /tmp/pfdeploy-cpu.lock .venv/bin/python benchmarks/int8_placement_ov.py
    flock /tmp/pfdeploy-cpu.lock .venv/bin/python benchmarks/int8_placement_ov.py --accuracy --layers
    PYTHONPATH=$PWD python3 benchmarks/int8_placement_ov.py            # no venv
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench_fp32 / bench_openvino helpers
sys.path.insert(1, str(HERE.parent))  # pfdeploy from this checkout when it is not installed

MODELS = ("r50", "r50_hybrid")
CALIB = HERE.parent / "tests" / "fixtures" / "digits" / "calib"
SPEED_CALIB_IMAGES = 32  # as bench_openvino: the placement, not the ranges, decides the speed
FIXTURE_CALIB_IMAGES = 256
CACHE = Path(tempfile.gettempdir()) / "pfdeploy-int8-placement-ov"
COMMAND = "flock /tmp/pfdeploy-cpu.lock .venv/bin/python benchmarks/int8_placement_ov.py"
_START = time.perf_counter()


@dataclass(frozen=True)
class Variant:
    """One placement: qdq_graph's `float_outputs`, then Q/DQ pairs dropped by `drop_qdq`, then how
    OpenVINO reads it ("prod" or "fold", see the module docstring)."""

    name: str
    float_outputs: tuple[str, ...]
    drop: tuple[str, ...]
    ov: str
    doc: str


# Rules of drop_qdq: the Q/DQ pair on a tensor is removed when (producer op, consumer ops) match.
DROP_RULES = {
    "pool-out": "after MaxPool (max-pooling commutes with quantization: the input's pair covers it)",
    "conv-relu": "between Conv and Relu (the pair after the Relu stays)",
    "add-out": "between Add and Relu (the pair after the Relu stays)",
    "head-out": "on the logits (Gemm/MatMul output to the graph output)",
}
TRT_FLOAT_OUTPUTS = ("Conv", "Add", "Gemm", "MatMul")  # Q/DQ only on Conv/Gemm and residual-Add inputs
VARIANTS = (
    Variant("current", (), (), "prod", "production: RESNET_OPS, Q/DQ on every op output"),
    Variant("current/fold", (), (), "fold", "production graph, other OpenVINO re-encoding"),
    Variant("current-pool/fold", (), ("pool-out",), "fold", "production graph without the pair after MaxPool"),
    Variant("trt", TRT_FLOAT_OUTPUTS, (), "prod", f"float_outputs={','.join(TRT_FLOAT_OUTPUTS)}: inputs only"),
    Variant("trt/fold", TRT_FLOAT_OUTPUTS, (), "fold", "the same, ReLU folded for OpenVINO"),
    Variant("trt/fold-u8", TRT_FLOAT_OUTPUTS, (), "fold-u8",
            "the same, ReLU folded and other activations u8 (zero point 128) as cpu_graph_from_qdq does"),
    Variant("trt-pool/fold", TRT_FLOAT_OUTPUTS, ("pool-out",), "fold",
            "the same without the pair after MaxPool (NNCF's placement)"),
)


def progress(message: str) -> None:
    print(f"[{time.perf_counter() - _START:6.1f} s] {message}", flush=True)


# ---------------------------------------------------------------------------------------------------
# Graph passes


def _activation_qs(graph: onnx.GraphProto, inits: set[str]) -> list[onnx.NodeProto]:
    return [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]


def drop_qdq(model: onnx.ModelProto, rules: tuple[str, ...]) -> tuple[onnx.ModelProto, int]:
    """A copy of `model` without the activation Q -> DQ pairs that DROP_RULES `rules` name; (model, n removed).

    Consumers of the pair's DequantizeLinear read the float tensor instead (a graph output is renamed
    back onto its producer). Scales/zero points no longer used are removed.
    """
    from pfdeploy._onnxgraph import consumers, producers

    unknown = set(rules) - set(DROP_RULES)
    if unknown:
        raise ValueError(f"unknown drop rules {sorted(unknown)}; known: {', '.join(DROP_RULES)}")
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    producer, users = producers(graph), consumers(graph)
    removed: set[int] = set()
    renames: dict[str, str] = {}  # old tensor name -> new, for graph outputs
    count = 0
    for q in _activation_qs(graph, inits):
        src = producer.get(q.input[0])
        dqs = users.get(q.output[0], [])
        if src is None or not dqs or any(d.op_type != "DequantizeLinear" for d in dqs):
            continue
        after = [u for d in dqs for u in users.get(d.output[0], [])]
        to_output = any(d.output[0] in outputs for d in dqs)
        kinds = {u.op_type for u in after}
        hit = (("pool-out" in rules and src.op_type == "MaxPool")
               or ("conv-relu" in rules and src.op_type == "Conv" and kinds == {"Relu"} and not to_output)
               or ("add-out" in rules and src.op_type == "Add" and kinds == {"Relu"} and not to_output)
               or ("head-out" in rules and src.op_type in ("Gemm", "MatMul") and to_output and not after))
        if not hit:
            continue
        for d in dqs:
            for u in users.get(d.output[0], []):
                for k, name in enumerate(u.input):
                    if name == d.output[0]:
                        u.input[k] = q.input[0]
            if d.output[0] in outputs:
                renames[q.input[0]] = d.output[0]
            removed.add(id(d))
        removed.add(id(q))
        count += 1
    kept = [n for n in graph.node if id(n) not in removed]
    for node in kept:
        for k, name in enumerate(node.input):
            node.input[k] = renames.get(name, name)
        for k, name in enumerate(node.output):
            node.output[k] = renames.get(name, name)
    del graph.node[:]
    graph.node.extend(kept)
    _drop_unused_initializers(graph)
    del graph.value_info[:]
    return model, count


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
    live = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(live)


def ov_reencode(model: onnx.ModelProto, shift_signed: bool = False) -> tuple[onnx.ModelProto, dict[str, int]]:
    """The `fold` re-encoding for OpenVINO (a candidate for qdq.openvino_graph_from_qdq).

    Every `Relu -> QuantizeLinear(s8, zero point 0)` whose Relu feeds only that Quantize becomes
    `QuantizeLinear(u8, zero point 0)` on the Relu's input (negative values saturate to 0 as the ReLU
    did; the same scale, top 255*s instead of 127*s); a `Q -> DQ` pair right before such a Relu (only
    there for the Relu) goes too. Other activations stay s8 with zero point 0, or with `shift_signed`
    become u8 with zero point 128 as in qdq.cpu_graph_from_qdq. Weights stay s8. The input is not modified.
    """
    from pfdeploy._onnxgraph import consumers, producers

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    init = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    producer, users = producers(graph), consumers(graph)
    removed: set[int] = set()
    unsigned_q: list[onnx.NodeProto] = []
    folded = with_pair = 0
    for relu in [n for n in graph.node if n.op_type == "Relu"]:
        after = users.get(relu.output[0], [])
        if len(after) != 1 or after[0].op_type != "QuantizeLinear" or relu.output[0] in outputs:
            continue
        q2 = after[0]
        if len(q2.input) < 3 or q2.input[2] not in init or numpy_helper.to_array(init[q2.input[2]]).any() \
                or init[q2.input[2]].data_type != TensorProto.INT8:
            continue
        source = relu.input[0]
        dq1 = producer.get(source)
        if dq1 is not None and dq1.op_type == "DequantizeLinear" and len(users.get(dq1.output[0], [])) == 1:
            q1 = producer.get(dq1.input[0])
            if q1 is not None and q1.op_type == "QuantizeLinear" and len(users.get(q1.output[0], [])) == 1:
                source = q1.input[0]
                removed.update((id(q1), id(dq1)))
                with_pair += 1
        q2.input[0] = source
        removed.add(id(relu))
        unsigned_q.append(q2)
        folded += 1
    new_inits: dict[str, TensorProto] = {}

    def zero_point(old: str, value: int) -> str:
        name = f"{old}_u8z{value}"
        if name not in new_inits:
            shape = numpy_helper.to_array(init[old]).shape
            new_inits[name] = numpy_helper.from_array(np.full(shape, value, np.uint8), name)
        return name

    unsigned_zps = {q.input[2] for q in unsigned_q}
    shifted = 0
    for node in graph.node:
        if id(node) in removed or node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        if node.op_type == "DequantizeLinear" and node.input[0] in init:
            continue  # weights stay s8
        zp = node.input[2]
        if zp in unsigned_zps:
            node.input[2] = zero_point(zp, 0)
        elif shift_signed and zp in init and init[zp].data_type == TensorProto.INT8 \
                and not numpy_helper.to_array(init[zp]).any():
            node.input[2] = zero_point(zp, 128)
            shifted += 1
    kept = [n for n in graph.node if id(n) not in removed]
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(new_inits.values())
    _drop_unused_initializers(graph)
    del graph.value_info[:]
    return model, {"relu_folded": folded, "relu_folded_with_pair": with_pair, "shifted_u8": shifted}


def qdq_sites(model: onnx.ModelProto) -> Counter:
    """Counter of 'producer>consumers' for every activation Q/DQ pair (where the pairs sit)."""
    from pfdeploy._onnxgraph import consumers, producers

    graph = model.graph
    inits = {i.name for i in graph.initializer}
    producer, users = producers(graph), consumers(graph)
    sites: Counter = Counter()
    for q in _activation_qs(graph, inits):
        src = producer.get(q.input[0])
        after = sorted({u.op_type for d in users.get(q.output[0], []) for u in users.get(d.output[0], [])})
        sites[f"{src.op_type if src else 'input'}>{'+'.join(after) or 'output'}"] += 1
    return sites


def sites_text(sites: Counter) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(sites.items(), key=lambda kv: (-kv[1], kv[0])))


# ---------------------------------------------------------------------------------------------------
# Building the graphs


def calibrated_variants(fp32: Path, source_dir: Path, num_images: int, method: str, out_dir: Path,
                        variants=VARIANTS) -> dict[str, Path]:
    """{variant name: Q/DQ ONNX path}: one calibration (pfdeploy's, RESNET_OPS), one qdq_graph per
    distinct float_outputs, then drop_qdq. Written under `out_dir` (remade every run: cheap)."""
    from pfdeploy._io import sha256_file, temporary_dir
    from pfdeploy._onnxfile import load_onnx
    from pfdeploy._onnxgraph import graph_inputs
    from pfdeploy.calibration.quantize import (
        _library_temporaries_in,
        _pre_process,
        _Reader,
        cache_key,
        cache_root,
        calibrate_to_cache,
        calibration_set,
        family_of,
        op_types_for,
        preprocess_of,
        qdq_graph,
    )

    source = load_onnx(fp32, external_data=False)
    pre, fmt = preprocess_of(source, fp32)
    calib = calibration_set(source_dir, pre, fmt, num_images=num_images, seed=0)
    family = family_of(source)
    if family != "resnet":
        raise SystemExit(f"{fp32.name} is a {family}; this experiment is about the ResNet placement")
    ops = op_types_for(family)
    key = cache_key(sha256_file(fp32), calib.sha256, method, num_images, 0, [*ops, "tensorrt"])
    cache_file = cache_root(CACHE) / f"{key}.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    with temporary_dir("placement") as tmp, _library_temporaries_in(tmp):
        pre_path = tmp / "pre.onnx"
        _pre_process(fp32, pre_path, "tensorrt")
        graph_input = graph_inputs(source)[0]
        calibrate_to_cache(pre_path, _Reader(graph_input.name, calib.inputs, graph_input.fixed_batch), ops,
                           method, cache_file)
        bases: dict[tuple[str, ...], onnx.ModelProto] = {}
        for v in variants:
            if v.float_outputs not in bases:
                qdq_path = tmp / f"qdq{len(bases)}.onnx"
                with contextlib.redirect_stdout(io.StringIO()):
                    qdq_graph(pre_path, qdq_path, ops, cache_file, (), method, v.float_outputs)
                bases[v.float_outputs] = onnx.load(str(qdq_path))
            model, _ = drop_qdq(bases[v.float_outputs], v.drop) if v.drop else (bases[v.float_outputs], 0)
            have = {p.key for p in model.metadata_props}  # pfdeploy.preprocess etc., as pfdeploy quantize keeps
            model.metadata_props.extend(p for p in source.metadata_props if p.key not in have)
            onnx.checker.check_model(model)
            path = out_dir / f"{fp32.stem}.{v.name.replace('/', '_')}.onnx"
            onnx.save(model, str(path))
            paths[v.name] = path
    return paths


def nncf_ir(fp32: Path, source_dir: Path, num_images: int, out_xml: Path) -> Path:
    """The peer, exactly as bench_openvino makes it (cached by file name)."""
    from bench_openvino import calibration_inputs, nncf_from_onnx

    if not out_xml.exists():
        nncf_from_onnx(fp32, calibration_inputs(fp32, source_dir, num_images), out_xml)
    return out_xml


def trt_result(path: Path) -> str:
    from pfdeploy.engines.trt_check import trt_violations

    found = trt_violations(onnx.load(str(path)))
    return "pass (0)" if not found else f"FAIL ({len(found)}: {found[0]})"


# ---------------------------------------------------------------------------------------------------
# OpenVINO


class OvRunner:
    """callable(x) -> logits of one graph compiled by OpenVINO with pfdeploy's fp32 properties."""

    def __init__(self, compiled, session=None):
        self.compiled, self.session = compiled, session
        self.request = compiled.create_infer_request()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.session is not None:
            return self.session(x)
        self.request.infer([x])
        return self.request.get_output_tensor(0).data.copy()

    def close(self) -> None:
        if self.session is not None:
            self.session.close()


def ov_runner(path: Path, how: str) -> OvRunner:
    """`how`: "prod" (pfdeploy.runtime.load, the INT8 OV path), "fold" / "fold-u8" (ov_reencode without /
    with shift_signed), "ir" (an OpenVINO IR)."""
    from pfdeploy.runtime import load
    from pfdeploy.runtime.openvino_backend import _keep_batch_dynamic, compile_config, shared_core

    if how == "prod":
        session = load(path, backend="openvino")
        return OvRunner(session.compiled_model, session)
    core = shared_core()
    if how == "ir":
        model = core.read_model(str(path))
    elif how in ("fold", "fold-u8"):
        reencoded, _ = ov_reencode(onnx.load(str(path)), shift_signed=how == "fold-u8")
        model = core.read_model(io.BytesIO(reencoded.SerializeToString()))
        _keep_batch_dynamic(model, True)
    else:
        raise ValueError(how)
    return OvRunner(core.compile_model(model, "CPU", compile_config("fp32")))


def runtime_summary(runner: OvRunner, x: np.ndarray) -> list[str]:
    """OpenVINO's runtime graph: (layer type, precision in -> out) counts, then per-layer exec types/times."""
    from pfdeploy.runtime.openvino_backend import layer_precisions

    lines = ["    runtime graph: " + ", ".join(f"{layer}:{prec} {n}" for (layer, prec), n in
                                               sorted(layer_precisions(runner.compiled).items())
                                               if layer not in ("Const", "Input", "Output"))]
    ops = runner.compiled.get_runtime_model().get_ordered_ops()
    outs = Counter()
    for op in ops:
        info = op.get_rt_info()
        if "layerType" in info and info["layerType"].astype(str) in ("Convolution", "Eltwise", "FakeQuantize",
                                                                      "Reorder", "Pooling", "FullyConnected"):
            outs[(info["layerType"].astype(str), info["runtimePrecision"].astype(str),
                  info["outputPrecisions"].astype(str))] += 1
    lines.append("    (type, runtime precision, output precision): "
                 + ", ".join(f"{k} {n}" for k, n in sorted(outs.items())))
    return lines


def profile(path: Path, how: str, x: np.ndarray, calls: int = 5) -> list[str]:
    """Per-layer exec types and mean ms per call (PERF_COUNT on a separate compile)."""
    from pfdeploy.runtime.openvino_backend import _keep_batch_dynamic, compile_config, shared_core

    core = shared_core()
    if how == "ir":
        model = core.read_model(str(path))
    else:
        from pfdeploy.calibration.qdq import openvino_graph_from_qdq

        graph = onnx.load(str(path))
        graph = ((openvino_graph_from_qdq(graph) or graph) if how == "prod"
                 else ov_reencode(graph, shift_signed=how == "fold-u8")[0])
        model = core.read_model(io.BytesIO(graph.SerializeToString()))
        _keep_batch_dynamic(model, True)
    compiled = core.compile_model(model, "CPU", {**compile_config("fp32"), "PERF_COUNT": True})
    request = compiled.create_infer_request()
    for _ in range(2):
        request.infer([x])
    times: Counter = Counter()
    for _ in range(calls):
        request.infer([x])
        for p in request.profiling_info:
            if p.status == p.Status.EXECUTED:
                times[(p.node_type, p.exec_type)] += p.real_time.total_seconds() * 1e3 / calls
    total = sum(times.values())
    return [f"    profile ({total:.1f} ms/call): " + ", ".join(
        f"{t}/{e} {ms:.1f}" for (t, e), ms in sorted(times.items(), key=lambda kv: -kv[1]) if ms >= 0.05)]


# ---------------------------------------------------------------------------------------------------
# Speed and accuracy


def measure_model(name: str, args, variants) -> dict:
    from bench_fp32 import export_cached

    from pfdeploy.runtime.timing import time_interleaved

    progress(f"{name}: FP32 export")
    fp32 = export_cached(name)
    progress(f"{name}: calibration ({SPEED_CALIB_IMAGES} images, minmax) and {len(variants)} variants")
    paths = calibrated_variants(fp32, CALIB, SPEED_CALIB_IMAGES, "minmax", CACHE / "speed", variants)
    progress(f"{name}: NNCF")
    row: dict = {"model": name, "variants": {}, "peer": "NNCF"}
    runners = {}
    try:
        nncf = nncf_ir(fp32, CALIB, SPEED_CALIB_IMAGES, CACHE / "speed" / f"{fp32.stem}.nncf{SPEED_CALIB_IMAGES}.xml")
        runners["NNCF"] = ov_runner(nncf, "ir")
    except ImportError as exc:  # NNCF is a bench-only dependency: compare with the first variant instead
        row["peer"] = variants[0].name
        progress(f"{name}: NNCF unavailable ({exc}); ratios are to {row['peer']}")
    for v in variants:
        runners[v.name] = ov_runner(paths[v.name], v.ov)
        row["variants"][v.name] = {"trt": trt_result(paths[v.name]),
                                   "sites": qdq_sites(onnx.load(str(paths[v.name]), load_external_data=False))}
    x = np.random.default_rng(args.batch).standard_normal((args.batch, 3, 224, 224)).astype(np.float32)
    if args.layers:
        for label, runner in runners.items():
            how = "ir" if label == "NNCF" else next(v.ov for v in variants if v.name == label)
            path = nncf if label == "NNCF" else paths[label]
            print(f"  {name} {label}:", flush=True)
            print("\n".join(runtime_summary(runner, x) + profile(path, how, x)), flush=True)
    # the target before another can cost it ~10% (docs/benchmarks.md): every pass below uses the
    # reverse of the last, on top of time_interleaved's own alternating order.
    names = list(runners)
    progress(f"{name}: timing {len(names)} targets x {args.rounds} rounds x {args.orders} orders, batch {args.batch}")
    passes = []
    for index in range(args.orders):
        order = names if index % 2 == 0 else names[::-1]
        passes.append(time_interleaved({k: (lambda f=runners[k]: f(x)) for k in order}, rounds=args.rounds,
                                       min_seconds=args.min_seconds, warmup=2 if index == 0 else 1))
    for k in names:
        t = np.concatenate([p[k] for p in passes])
        peer = np.concatenate([p[row["peer"]] for p in passes])
        entry = row["variants"].setdefault(k, {"trt": "-", "sites": Counter()})
        entry["ips"] = args.batch / float(np.median(t))
        entry["x_nncf"] = float(np.median(peer / t))
        entry["x_by_order"] = [float(np.median(np.asarray(p[row["peer"]]) / np.asarray(p[k]))) for p in passes]
    for r in runners.values():
        r.close()
    progress(f"{name}: done")
    return row


def measure_accuracy(variants) -> list[dict]:
    """Top-1 (%) of every trained ResNet fixture: FP32 (ORT), NNCF, and each variant through OpenVINO."""
    from bench_fp32 import _source_digest
    from bench_openvino import _top1

    from pfdeploy.calibration import load_labeled
    from pfdeploy.calibration.fixtures import get_fixture, list_fixtures
    from pfdeploy.export import onnx_from_model
    from pfdeploy.models import get_config
    from pfdeploy.runtime import load

    rows = []
    for name in list_fixtures():
        fx = get_fixture(name)
        if get_config(fx.model).family != "resnet":
            continue
        progress(f"fixture {name}: export, calibration ({FIXTURE_CALIB_IMAGES} images, entropy), variants, NNCF")
        fp32 = CACHE / "fixture" / f"{name}_{_source_digest()}.fp32.onnx"
        if not fp32.exists():
            fp32.parent.mkdir(parents=True, exist_ok=True)
            onnx_from_model(fx.model, fp32, checkpoint=fx.checkpoint, num_classes=fx.num_classes,
                            overrides=fx.overrides, preprocess=fx.preprocess)
        paths = calibrated_variants(fp32, fx.calib_dir, FIXTURE_CALIB_IMAGES, "entropy", CACHE / "fixture", variants)
        nncf = nncf_ir(fp32, fx.calib_dir, FIXTURE_CALIB_IMAGES, CACHE / "fixture" / f"{fp32.stem}.nncf.xml")
        images, labels, _ = load_labeled(fx.val_dir, fx.preprocess)
        row = {"fixture": name, "images": len(labels), "top1": {}, "trt": {}}
        with load(fp32, backend="onnxruntime") as session:
            row["top1"]["FP32 ORT"] = _top1(session, images, labels)
        row["top1"]["NNCF"] = _top1(ov_runner(nncf, "ir"), images, labels)
        for v in variants:
            runner = ov_runner(paths[v.name], v.ov)
            row["top1"][v.name] = _top1(runner, images, labels)
            runner.close()
            row["trt"][v.name] = trt_result(paths[v.name])
        rows.append(row)
        progress(f"fixture {name}: done")
    return rows


def speed_table(rows: list[dict], variants, batch: int) -> str:
    heads = " | ".join(f"{r['model']} img/s (x {r['peer']})" for r in rows)
    lines = [f"| variant | ov | {heads} | trt_check | "
             "Q/DQ pairs (producer>consumers) |",
             "| --- | --- |" + " --- |" * len(rows) + " --- | --- |"]
    for label in [*(["NNCF"] if all(r["peer"] == "NNCF" for r in rows) else []), *(v.name for v in variants)]:
        v = next((v for v in variants if v.name == label), None)
        cells = [f"{r['variants'][label]['ips']:.1f} ({r['variants'][label]['x_nncf']:.2f}x; "
                 + "/".join(f"{x:.2f}" for x in r["variants"][label]["x_by_order"]) + ")" for r in rows]
        trt = "; ".join(dict.fromkeys(r["variants"][label]["trt"] for r in rows))
        sites = " / ".join(sites_text(r["variants"][label]["sites"]) for r in rows) if v else "FakeQuantize (NNCF)"
        lines.append(f"| {label} | {v.ov if v else 'ir'} | {' | '.join(cells)} | {trt} | {sites} |")
    return "\n".join(lines) + (f"\n\n(batch {batch}; `(Rx; a/b)`: R = median of all per-round ratios to the peer "
                                "named, a/b = the same per timing order: forward / reversed)")


def accuracy_table(rows: list[dict], variants) -> str:
    labels = ["FP32 ORT", "NNCF", *(v.name for v in variants)]
    lines = ["| fixture | images | " + " | ".join(labels) + " |", "| --- | --- |" + " --- |" * len(labels)]
    for r in rows:
        lines.append(f"| {r['fixture']} | {r['images']} | " + " | ".join(f"{r['top1'][k]:.2f}" for k in labels) + " |")
    return "\n".join(lines)


def versions() -> str:
    import onnxruntime
    import openvino
    from bench_openvino import nncf_version

    from pfdeploy._cpu import cpu_summary

    return (f"{cpu_summary()}; python {sys.version.split()[0]}, numpy {np.__version__}, onnxruntime "
            f"{onnxruntime.__version__}, openvino {openvino.__version__}, nncf {nncf_version()}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=lambda s: tuple(s.split(",")), default=MODELS, help="comma-separated")
    parser.add_argument("--variants", type=lambda s: tuple(s.split(",")), default=None,
                        help=f"comma-separated subset of {','.join(v.name for v in VARIANTS)}")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-seconds", type=float, default=0.4)
    parser.add_argument("--orders", type=int, default=2, help="timing passes, each in the reverse order of the last")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--accuracy", action="store_true", help="also the trained ResNet fixtures' top-1")
    parser.add_argument("--layers", action="store_true", help="print OpenVINO's runtime graph and profile")
    parser.add_argument("--no-speed", action="store_true", help="skip the timing (with --accuracy)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    variants = VARIANTS if args.variants is None else tuple(v for v in VARIANTS if v.name in args.variants)
    missing = set(args.variants or ()) - {v.name for v in variants}
    if missing:
        parser.error(f"unknown variants {sorted(missing)}")
    progress(versions())
    out = ["## INT8 Q/DQ placement on ResNets through OpenVINO vs NNCF", "", f"`{COMMAND}` ({versions()})", ""]
    out += [f"- `{v.name}`: {v.doc}" + (f"; dropped: {', '.join(DROP_RULES[d] for d in v.drop)}" if v.drop else "")
            for v in variants]
    if not args.no_speed:
        rows = [measure_model(name, args, variants) for name in args.models]
        out += ["", speed_table(rows, variants, args.batch)]
    if args.accuracy:
        out += ["", f"Fixture top-1 (%) on the held-out digits through OpenVINO (INT8: {FIXTURE_CALIB_IMAGES} "
                "calibration images, entropy; NNCF: its defaults on the same images):", "",
                accuracy_table(measure_accuracy(variants), variants)]
    progress("finished")
    print("\n".join(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
