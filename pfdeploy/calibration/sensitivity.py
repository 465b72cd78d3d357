"""Which quantized tensors of an INT8 graph cost its accuracy, and what keeping each in float buys.

For every activation the Q/DQ graph quantizes (one QuantizeLinear per tensor), on the analysis
images (the labelled --val-data, or the calibration images):

- `sqnr_db`: signal-to-noise of the INT8 graph's dequantized tensor against the same tensor of the
  FP32 graph (10 log10 sum x^2 / sum (x_int8 - x)^2): the error accumulated up to that point;
- `local_sqnr_db`: the same for the FP32 tensor passed through this tensor's own Quantize/Dequantize:
  the noise this one quantizer adds (rounding plus clipping). An outlier channel that crushes the
  other channels onto a few INT8 levels shows here, whatever happened before it;
- `channel_sqnr_db`: the local SQNR of the median channel (each channel's own signal against its own
  noise). An outlier channel sets the tensor's one INT8 scale and crushes the other channels onto a
  few levels: the whole-tensor figure, dominated by the outlier's energy, hides that; this one does not;
- `clipped`: the share of FP32 values outside the calibrated range.

Tensors are ranked by the lower of `local_sqnr_db` and `channel_sqnr_db` (worst first). For the
worst ones the INT8 graph is remade with that tensor in float (the nodes that quantize it go into
the exclude list, as `--exclude` would) and its top-1 agreement with FP32 (and accuracy, with
labels) is measured. Tensors read or written by a max-pool or average-pool are marked `pf` (the
parameter-free layers).
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from pfdeploy._onnxgraph import consumers as users_of
from pfdeploy._onnxgraph import producers

log = logging.getLogger(__name__)

PF_OPS = ("MaxPool", "AveragePool")
WORST = 5  # tensors whose float what-if is measured
JUDGE_IMAGES = 1000  # images the budget and the INT8 check judge on, at most (drawn with the seed beyond that)
ANALYSIS_IMAGES = 200  # of those, the images the report's float what-ifs are measured on
EVAL_BATCH = 50  # images per run when judging a dynamic-batch graph
ERROR_BATCH = 16  # images per run when every quantized tensor is an output (two graphs' activations in memory)
ERROR_IMAGES = 128  # the SQNR figures use the first 128 analysis images (sums over every element: stable)
SCHEMA = "pfdeploy.sensitivity/1"


def within_points(drop: float, max_drop: float) -> bool:
    """`drop <= max_drop` for percentages computed from image counts: 90.1 - 89.1 is 1.0000000000000142 in
    floating point, and one image out of a million is 1e-4 points, so 1e-9 separates rounding from a real drop."""
    return drop <= max_drop + 1e-9


@dataclass(frozen=True)
class Eval:
    """Images to judge an INT8 graph on: graph inputs, labels (-1 where unknown), where they came from."""

    inputs: np.ndarray
    labels: np.ndarray
    source: str

    @property
    def labelled(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels >= 0).all())


def eval_images(source: str | Path, pre, input_format: str, num_images: int | None = JUDGE_IMAGES,
                seed: int = 0) -> Eval:
    """The images of `source` (class folders give labels) as the graph takes them, in a seeded random
    order, so that the first n of them (the SQNR images, the what-if images) are a fair sample."""
    from pfdeploy.calibration.images import load_labeled
    from pfdeploy.calibration.preprocess import normalize_uint8

    crops, labels, _ = load_labeled(source, pre, num_images=num_images, seed=seed, layout="nhwc")
    order = np.random.default_rng(seed).permutation(len(crops))
    crops, labels = crops[order], np.asarray(labels)[order]
    inputs = crops if input_format == "uint8-nhwc" else normalize_uint8(crops, pre)
    return Eval(inputs, labels, str(source))


@dataclass(frozen=True)
class QuantizedTensor:
    """One activation quantizer of a Q/DQ graph."""

    tensor: str  # the float tensor the QuantizeLinear reads (same name in the FP32 graph)
    dequantized: str  # the DequantizeLinear output that the INT8 graph's consumers read
    scale: float
    zero_point: int
    low: int
    high: int
    producer: str  # node writing `tensor` ("" for a graph input)
    producer_op: str
    consumers: tuple[str, ...]  # nodes reading the dequantized tensor
    consumer_ops: tuple[str, ...]
    nodes_to_float: tuple[str, ...]  # the --exclude names that keep this tensor in float

    @property
    def pf(self) -> bool:
        return self.producer_op in PF_OPS or any(op in PF_OPS for op in self.consumer_ops)


_RANGES = {onnx.TensorProto.INT8: (-128, 127), onnx.TensorProto.UINT8: (0, 255)}


def quantized_tensors(qdq: onnx.ModelProto, quantizable: Sequence[str]) -> list[QuantizedTensor]:
    """Every activation QuantizeLinear -> DequantizeLinear pair of `qdq`, in graph order.

    `quantizable`: the op types the quantizer was given; the nodes of those types next to a tensor
    are the ones whose exclusion keeps it in float.
    """
    graph = qdq.graph
    inits = {i.name: i for i in graph.initializer}
    made, users = producers(graph), users_of(graph)
    outputs = {o.name for o in graph.output}
    found = []
    for q in graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] in inits:
            continue
        dqs = [n for n in users.get(q.output[0], []) if n.op_type == "DequantizeLinear"]
        if len(dqs) != 1 or q.input[1] not in inits:
            continue
        dq = dqs[0]
        scale = numpy_helper.to_array(inits[q.input[1]])
        zero = inits.get(q.input[2]) if len(q.input) > 2 else None
        if scale.size != 1:
            continue
        zp = int(numpy_helper.to_array(zero).reshape(-1)[0]) if zero is not None else 0
        low, high = _RANGES.get(zero.data_type if zero is not None else onnx.TensorProto.UINT8, (-128, 127))
        writer = made.get(q.input[0])
        readers = [n for n in users.get(dq.output[0], [])]
        nodes = [n for n in [writer, *readers] if n is not None and n.op_type in quantizable and n.name]
        # a quantized graph output keeps its name on the DequantizeLinear; the Quantize reads a renamed copy
        name = dq.output[0] if dq.output[0] in outputs else q.input[0]
        found.append(QuantizedTensor(
            tensor=name, dequantized=dq.output[0], scale=float(scale.reshape(-1)[0]), zero_point=zp,
            low=low, high=high, producer=writer.name if writer is not None else "",
            producer_op=writer.op_type if writer is not None else "input",
            consumers=tuple(n.name for n in readers), consumer_ops=tuple(n.op_type for n in readers),
            nodes_to_float=tuple(dict.fromkeys(n.name for n in nodes))))
    return found


def _fake_quant(x: np.ndarray, t: QuantizedTensor) -> np.ndarray:
    q = np.clip(np.rint(x / t.scale) + t.zero_point, t.low, t.high)
    return ((q - t.zero_point) * t.scale).astype(np.float32)


def _db(signal: float, noise: float) -> float | None:
    if noise <= 0:
        return None  # exact: no noise at all
    return float(10 * np.log10(max(signal, 1e-30) / noise))


def tensor_errors(fp32_path: Path, qdq: onnx.ModelProto, tensors: Sequence[QuantizedTensor], input_name: str,
                  inputs: np.ndarray, fixed_batch: int | None, folder: Path) -> list[dict[str, Any]]:
    """sqnr_db, local_sqnr_db, channel_sqnr_db and clipped of every tensor on `inputs` (see the module docstring)."""
    from pfdeploy.calibration.activations import (
        padded_batches,
        run_batches,
        save_for_session,
        session_for,
        with_outputs,
    )

    fp32 = onnx.load(str(fp32_path))
    present = {o for n in fp32.graph.node for o in n.output} | {i.name for i in fp32.graph.input}
    usable = [t for t in tensors if t.tensor in present]
    ref_session = session_for(save_for_session(with_outputs(fp32, [t.tensor for t in usable]), folder / "ref.onnx"))
    int8_session = session_for(save_for_session(with_outputs(qdq, [t.dequantized for t in usable]),
                                                folder / "int8.onnx"))
    sums = {t.tensor: np.zeros(4) for t in usable}  # signal, accumulated noise, local noise, clipped count
    channel: dict[str, np.ndarray] = {}  # per channel: signal, local noise
    counts = {t.tensor: 0 for t in usable}
    batches, real = padded_batches(inputs, fixed_batch, ERROR_BATCH)
    for batch, count in zip(batches, real, strict=True):
        ref: dict[str, np.ndarray] = {}
        got: dict[str, np.ndarray] = {}
        run_batches(ref_session, input_name, [batch], [t.tensor for t in usable], ref.update, [count])
        run_batches(int8_session, input_name, [batch], [t.dequantized for t in usable], got.update, [count])
        for t in usable:
            x = ref[t.tensor].astype(np.float32)
            y = got[t.dequantized].astype(np.float32)
            limit_low, limit_high = (t.low - t.zero_point) * t.scale, (t.high - t.zero_point) * t.scale
            noise = np.square(_fake_quant(x, t) - x, dtype=np.float64)
            signal = np.square(x, dtype=np.float64)
            sums[t.tensor] += [float(signal.sum()), float(np.square(y - x, dtype=np.float64).sum()),
                               float(noise.sum()), float(np.count_nonzero((x < limit_low) | (x > limit_high)))]
            axis = _channel_axis(x)
            other = tuple(a for a in range(x.ndim) if a != axis)
            per_channel = np.stack([signal.sum(axis=other), noise.sum(axis=other)]) if other else None
            if per_channel is not None:
                channel[t.tensor] = per_channel + channel.get(t.tensor, 0)
            counts[t.tensor] += x.size
    rows = []
    for t in usable:
        signal, noise, local, clipped = sums[t.tensor]
        rows.append({"tensor": t.tensor, "producer": t.producer, "producer_op": t.producer_op,
                     "consumers": list(t.consumers), "consumer_ops": list(t.consumer_ops), "pf": t.pf,
                     "scale": t.scale, "sqnr_db": _db(signal, noise), "local_sqnr_db": _db(signal, local),
                     "channel_sqnr_db": _median_channel_db(channel.get(t.tensor)),
                     "clipped": clipped / max(counts[t.tensor], 1), "nodes_to_float": list(t.nodes_to_float)})
    return rows


def _channel_axis(x: np.ndarray) -> int:
    """Channels: axis 1 of an NCHW map, the last axis of tokens (N, T, C) or features (N, C)."""
    return 1 if x.ndim == 4 else x.ndim - 1


def _median_channel_db(per_channel: np.ndarray | None) -> float | None:
    if per_channel is None:
        return None
    signal, noise = per_channel
    live = signal > 0
    if not live.any():
        return None
    values = [_db(s, n) for s, n in zip(signal[live], noise[live], strict=True)]
    finite = [v for v in values if v is not None]
    if len(finite) * 2 <= len(values):
        return None  # most channels exact (e.g. all-zero noise): nothing to rank
    return float(np.median([v if v is not None else np.inf for v in values]))


def rank_value(row: dict[str, Any]) -> float:
    """What the ranking sorts by: the lower of the whole-tensor and median-channel local SQNR (dB)."""
    values = [v for v in (row["local_sqnr_db"], row["channel_sqnr_db"]) if v is not None]
    return min(values) if values else float("inf")


def logits_of(path: Path, inputs: np.ndarray, batch: int | None = None) -> np.ndarray:
    """Logits of an ONNX graph under ONNX Runtime CPU (pfdeploy's session options)."""
    from pfdeploy.calibration.activations import padded_batches
    from pfdeploy.runtime.ort_options import ort_session_from_onnx

    session = ort_session_from_onnx(str(path))
    name = session.get_inputs()[0].name
    batches, _ = padded_batches(inputs, batch, EVAL_BATCH)
    return np.concatenate([session.run(None, {name: b})[0] for b in batches])[:len(inputs)]


def scores(logits: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> dict[str, float | None]:
    """{"agreement": top-1 agreement with the reference logits (%), "top1": accuracy (%) or None}."""
    agree = 100.0 * float(np.mean(logits.argmax(1) == reference.argmax(1)))
    top1 = None if labels is None else 100.0 * float(np.mean(logits.argmax(1) == labels))
    return {"agreement": agree, "top1": top1}


class Judge:
    """Scores INT8 graphs of one `Calibrated` job against its FP32 graph on fixed images."""

    def __init__(self, job, images: Eval, reference: np.ndarray | None = None):
        self.job, self.images = job, images
        self.batch = job.source_fixed_batch
        self.labels = images.labels if images.labelled else None
        self.reference = logits_of(job.fp32_path, images.inputs, self.batch) if reference is None else reference
        self.fp32 = scores(self.reference, self.reference, self.labels)
        self.made = 0

    def subset(self, count: int) -> Judge:
        """The same judge on the first `count` images (the FP32 logits are not recomputed)."""
        if count >= len(self.images.inputs):
            return self
        part = Eval(self.images.inputs[:count], self.images.labels[:count], self.images.source)
        return Judge(self.job, part, self.reference[:count])

    def graph_path(self, exclude: Sequence[str]) -> Path:
        """The INT8 graph (the job's target form) with `exclude` in float, written in the job's folder."""
        from pfdeploy.calibration.activations import save_for_session

        self.made += 1
        return save_for_session(self.job.int8_model(exclude), self.job.folder / f"judge{self.made}.onnx")

    def logits(self, exclude: Sequence[str]) -> np.ndarray:
        path = self.graph_path(exclude)
        try:
            return logits_of(path, self.images.inputs, self.batch)
        finally:
            path.unlink(missing_ok=True)

    def score(self, exclude: Sequence[str]) -> dict[str, float | None]:
        return scores(self.logits(exclude), self.reference, self.labels)

    def check(self, exclude: Sequence[str], max_drop: float = 1.0) -> dict[str, Any]:
        """`verify`'s INT8 tolerances on these images against the FP32 graph, and (with labels) top-1
        within `max_drop` points: {"passed", "failures", "scores"}."""
        from pfdeploy.runtime.verify import compare_logits

        logits = self.logits(exclude)
        stats = compare_logits(self.reference, logits, "int8")
        got = scores(logits, self.reference, self.labels)
        failures = list(stats["failures"])
        if got["top1"] is not None and not within_points(self.fp32["top1"] - got["top1"], max_drop):
            failures.append(f"top-1 {got['top1']:.2f}% vs FP32 {self.fp32['top1']:.2f}%")
        return {"passed": not failures, "failures": failures, "scores": got}


def analyze(job, images: Eval, exclude: Sequence[str] = (), worst: int = WORST,
            judge: Judge | None = None, baseline: dict[str, float | None] | None = None) -> dict[str, Any]:
    """The sensitivity report of `job`'s INT8 graph (with `exclude` float) on `images` (see module doc);
    `judge` (default: one on `images`) measures the what-ifs; `baseline`: its score of the graph, if known."""
    judge = judge or Judge(job, images)
    images = judge.images
    qdq = job.qdq_model(exclude)
    tensors = quantized_tensors(qdq, job.ops)
    rows = tensor_errors(job.pre_path if job.pre_path.exists() else job.fp32_path, qdq, tensors, job.input_name,
                         images.inputs[:ERROR_IMAGES], job.source_fixed_batch, job.folder)
    rows.sort(key=rank_value)
    baseline = baseline or judge.score(exclude)
    for rank, row in enumerate(rows):
        row["rank"] = rank + 1
        row["float_effect"] = None
        if rank < worst and row["nodes_to_float"]:
            row["float_effect"] = judge.score([*exclude, *row["nodes_to_float"]])
    return {"schema": SCHEMA, "images": int(len(images.inputs)), "sqnr_images": int(min(len(images.inputs),
                                                                                        ERROR_IMAGES)),
            "source": images.source,
            "labelled": images.labelled, "target": job.target, "method": job.method,
            "excluded": list(exclude), "fp32": judge.fp32, "int8": baseline, "tensors": rows}


def table_rows(report: dict[str, Any], limit: int = 15) -> list[dict[str, Any]]:
    """Rows for a text/markdown table of the worst `limit` tensors."""
    def pct(effect, key):
        return "-" if not effect or effect.get(key) is None else f"{effect[key]:.2f}"

    def db(value):
        return "exact" if value is None else f"{value:.1f}"

    out = []
    for row in report["tensors"][:limit]:
        effect = row.get("float_effect")
        out.append({
            "rank": row["rank"], "tensor": row["tensor"], "between": f"{row['producer_op']} -> "
            + ",".join(sorted(set(row["consumer_ops"]))), "PF": "yes" if row["pf"] else "",
            "local SQNR dB": db(row["local_sqnr_db"]), "channel SQNR dB": db(row["channel_sqnr_db"]),
            "SQNR dB": db(row["sqnr_db"]),
            "clipped %": f"{100 * row['clipped']:.3f}", "float: agree %": pct(effect, "agreement"),
            "float: top-1 %": pct(effect, "top1"),
        })
    return out


TABLE_COLUMNS = ["rank", "tensor", "between", "PF", "local SQNR dB", "channel SQNR dB", "SQNR dB", "clipped %",
                 "float: agree %", "float: top-1 %"]


def summary_line(report: dict[str, Any]) -> str:
    """One line: the INT8 graph's agreement/accuracy against FP32 on the analysis images."""
    int8, fp32 = report["int8"], report["fp32"]
    line = (f"INT8 vs FP32 on {report['images']} images of {report['source']}: top-1 agreement "
            f"{int8['agreement']:.2f}%")
    if int8.get("top1") is not None:
        line += f", top-1 {int8['top1']:.2f}% (FP32 {fp32['top1']:.2f}%)"
    return line


def plot_sensitivity(report: dict[str, Any], path: str | Path, limit: int = 30) -> Path:
    """Bar plot of the local SQNR of the worst `limit` tensors (PF layers in another colour; dots:
    accumulated SQNR). Needs matplotlib."""
    from pfdeploy.errors import MissingDependencyError

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("the sensitivity plot needs matplotlib; pip install 'pfdeploy[plot]'") from None
    from matplotlib.patches import Patch

    from pfdeploy._io import atomic_path

    rows = report["tensors"][:limit]
    ranked = [rank_value(r) for r in rows]
    cap = max([v for v in ranked if np.isfinite(v)] or [60.0]) + 5
    local = [v if np.isfinite(v) else cap for v in ranked]
    accumulated = [cap if r["sqnr_db"] is None else r["sqnr_db"] for r in rows]
    colors = ["tab:orange" if r["pf"] else "tab:blue" for r in rows]
    labels = [f"{r['tensor']} ({r['producer_op']}->{','.join(sorted(set(r['consumer_ops'])))})" for r in rows]
    fig, ax = plt.subplots(figsize=(8, 1.5 + 0.22 * len(rows)))
    y = np.arange(len(rows))
    ax.barh(y, local, color=colors)
    ax.plot(accumulated, y, "k.", label="SQNR vs FP32 graph (accumulated)")
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("local SQNR of the tensor's own INT8 quantizer, lower of whole tensor and median channel "
                  "(dB, higher is better)", fontsize=8)
    ax.set_title(textwrap.fill(summary_line(report), 110), fontsize=8)
    ax.legend(handles=[Patch(color="tab:orange", label="PF layer (max/avg-pool) in or out"),
                       Patch(color="tab:blue", label="other layer"), *ax.get_legend_handles_labels()[0]],
              fontsize=7, loc="lower right")
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path
