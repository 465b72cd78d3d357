"""An accuracy budget for INT8: keep the most sensitive quantized tensors in float until the INT8 graph
is within `max_drop` points of FP32 on labelled images (top-1), or of FP32's own predictions (top-1
agreement) when the images have no labels.

The search (`search_budget`): score the INT8 graph; if it is outside the budget, rank the quantized
tensors with the sensitivity analysis (pfdeploy.calibration.sensitivity), measure the worst few kept
in float one at a time, order the candidates (measured gains first, then the ranking) and find the
shortest prefix of that order which, kept in float, meets the budget: doubling the prefix (1, 2, 4,
...) until it does, then halving the last interval, each prefix measured. A tensor goes to float through the
quantizer's own exclude list (the nodes that quantize it), so the result is a standard Q/DQ graph
that `pfdeploy quantize --exclude` reproduces, for every target, TensorRT-valid. When the budget is
met only with no activation left in INT8, or not at all, it is refused in one line.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pfdeploy.calibration.sensitivity import WORST, Eval, Judge, analyze, within_points
from pfdeploy.errors import PfdeployError

log = logging.getLogger(__name__)

SPEED_ROUNDS = 5
SPEED_SECONDS = 0.15  # per graph and round: a side-by-side estimate of the cost, not a benchmark
SPEED_BATCH = 8


@dataclass
class BudgetResult:
    """What the budget kept in float and what it measured."""

    max_drop: float
    metric: str  # "top1" (labelled images) or "agreement" (top-1 agreement with FP32)
    images: int
    fp32: float
    before: float  # the INT8 graph without the budget's exclusions
    after: float
    kept_float: list[str] = field(default_factory=list)  # node names the budget excluded
    tensors: list[str] = field(default_factory=list)  # tensors they keep in float
    steps: list[dict[str, Any]] = field(default_factory=list)  # prefixes measured: count, last tensor, score
    speed: dict[str, Any] | None = None  # img/s before and after, measured side by side

    @property
    def drop(self) -> float:
        return self.fp32 - self.after

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drop": round(self.drop, 4)}

    @classmethod
    def from_json(cls, text: str) -> BudgetResult:
        """The result recorded in an INT8 graph's `pfdeploy.int8_budget` metadata (`to_dict` as JSON)."""
        data = json.loads(text)
        data.pop("drop", None)  # derived
        return cls(**data)


def _value(score: dict[str, float | None], metric: str) -> float:
    return float(score[metric])


def _order(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Candidates: tensors whose float what-if was measured, best gain first, then the rest by rank."""
    usable = [r for r in rows if r["nodes_to_float"]]
    measured = [r for r in usable if r.get("float_effect")]
    measured.sort(key=lambda r: (-_value(r["float_effect"], metric), r["rank"]))
    return measured + [r for r in usable if not r.get("float_effect")]


def _prefixes(rows: list[dict[str, Any]], exclude: Sequence[str],
              names: set[str]) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """[(tensors, nodes)] of the first 1, 2, ... candidates in float. A candidate adding no node is skipped,
    and so is one with a node the source graph does not have (onnxruntime's CPU pre-processing can fuse
    and rename nodes): `--exclude` takes source names, and must reproduce the budget's graph."""
    tensors: list[str] = []
    nodes: list[str] = []
    out = []
    for row in rows:
        if not set(row["nodes_to_float"]) <= names:
            continue
        new = [n for n in row["nodes_to_float"] if n not in nodes and n not in exclude]
        if new:
            tensors.append(row["tensor"])
            nodes += new
            out.append((tuple(tensors), tuple(nodes)))
    return out


def _smallest_within(total: int, within) -> int | None:
    """The smallest count in 1..total with `within(count)`, found by doubling (1, 2, 4, ...) and then
    halving the last interval, so about 2 log2(count) graphs are measured instead of count; None when not
    even `total` is within. Assumes more float is not worse, which the measurements mostly bear out; the
    count returned is one that was measured within the budget either way."""
    low, high = 0, 1
    while not within(high):
        if high == total:
            return None
        low, high = high, min(2 * high, total)
    while high - low > 1:
        middle = (low + high) // 2
        if within(middle):
            high = middle
        else:
            low = middle
    return high


def _has_int8_activations(job, exclude: Sequence[str]) -> bool:
    model = job.qdq_model(exclude)
    inits = {i.name for i in model.graph.initializer}
    return any(n.op_type == "QuantizeLinear" and n.input[0] not in inits for n in model.graph.node)


def search_budget(job, images: Eval, max_drop: float, exclude: Sequence[str] = (), worst: int = WORST,
                  judge: Judge | None = None) -> BudgetResult:
    """Find the nodes to keep in float so that `job`'s INT8 graph is within `max_drop` points (see module doc)."""
    judge = judge or Judge(job, images)
    metric = "top1" if images.labelled else "agreement"
    fp32 = _value(judge.fp32, metric)
    start = judge.score(exclude)
    result = BudgetResult(max_drop, metric, int(len(images.inputs)), fp32, _value(start, metric),
                          _value(start, metric))
    log.info("INT8 %s %.2f vs FP32 %.2f (budget %.2f points)", metric, result.before, fp32, max_drop)
    if within_points(result.drop, max_drop):
        return result
    report = analyze(job, images, exclude, worst, judge, baseline=start)
    names = {n.name for n in job.source.graph.node}  # what `--exclude` accepts, to reproduce the result
    prefixes = _prefixes(_order(report["tensors"], metric), exclude, names)
    if not prefixes:
        raise PfdeployError(f"--max-drop {max_drop:g}: no quantized tensor can be kept in float (INT8 {metric} "
                            f"{result.before:.2f} vs FP32 {fp32:.2f}); check the images, or deploy the FP32 graph")
    scored: dict[int, float] = {}

    def within(count: int) -> bool:
        """Whether the first `count` candidates in float meet the budget (each count measured once)."""
        if count not in scored:
            tensors, nodes = prefixes[count - 1]
            scored[count] = _value(judge.score([*exclude, *nodes]), metric)
            result.steps.append({"tensors": count, "tensor": tensors[-1], "nodes": list(nodes),
                                 metric: scored[count]})
            log.info("%d tensor(s) float (last %s): %s %.2f", count, tensors[-1], metric, scored[count])
        return within_points(fp32 - scored[count], max_drop)

    count = _smallest_within(len(prefixes), within)
    if count is None:
        raise PfdeployError(
            f"--max-drop {max_drop:g}: not met even with all {len(prefixes)} candidate tensors in float ({metric} "
            f"{fp32 - scored[len(prefixes)]:.2f} points below FP32 on {result.images} images); check the images, "
            "or deploy the FP32 graph")
    result.tensors, floated = (list(part) for part in prefixes[count - 1])
    result.after, result.kept_float = scored[count], floated
    if not _has_int8_activations(job, [*exclude, *floated]):
        raise PfdeployError(
            f"--max-drop {max_drop:g} is met only with every activation in float (INT8 {metric} {result.before:.2f} "
            f"vs FP32 {fp32:.2f} on {result.images} images): no INT8 graph is left; raise --max-drop or deploy "
            "the FP32 graph")
    return result


def speed_cost(job, before: Sequence[str], after: Sequence[str], inputs: np.ndarray,
               rounds: int = SPEED_ROUNDS) -> dict[str, Any]:
    """img/s of the INT8 graph without and with the budget's float nodes, timed interleaved (batch 8) on
    the backend `pfdeploy.runtime.load` picks on this CPU for the graph."""
    from pfdeploy.calibration.activations import save_for_session
    from pfdeploy.runtime import load
    from pfdeploy.runtime.timing import time_interleaved

    batch = job.source_fixed_batch or SPEED_BATCH
    x = inputs[np.arange(batch) % len(inputs)]
    paths = {name: save_for_session(job.int8_model(exclude), job.folder / f"speed-{name}.onnx")
             for name, exclude in (("before", before), ("after", after))}
    sessions = {name: load(path) for name, path in paths.items()}
    try:
        backend = sessions["before"].backend
        start = time.perf_counter()
        times = time_interleaved({k: (lambda s=s: s(x)) for k, s in sessions.items()}, rounds=rounds,
                                 min_seconds=SPEED_SECONDS, warmup=1)
        seconds = time.perf_counter() - start
    finally:
        for session in sessions.values():
            session.close()
    before_s, after_s = np.asarray(times["before"]), np.asarray(times["after"])
    return {"backend": backend, "batch": batch, "rounds": rounds,
            "before_img_per_s": round(batch / float(np.median(before_s)), 2),
            "after_img_per_s": round(batch / float(np.median(after_s)), 2),
            "after_over_before": round(float(np.median(before_s / after_s)), 3), "seconds": round(seconds, 1)}


def budget_summary(result: BudgetResult) -> str:
    """One line for the CLI and the logs."""
    what = "top-1" if result.metric == "top1" else "top-1 agreement with FP32"
    line = (f"INT8 budget {result.max_drop:g} points of {what} on {result.images} images: FP32 {result.fp32:.2f}%, "
            f"INT8 {result.before:.2f}%")
    if not result.kept_float:
        return line + ", within budget with nothing kept float"
    line += (f" -> {result.after:.2f}% with {len(result.tensors)} tensor(s) kept float "
             f"({', '.join(result.kept_float)})")
    if result.speed:
        speed = result.speed
        line += (f"; speed {speed['after_img_per_s']:.1f} vs {speed['before_img_per_s']:.1f} img/s "
                 f"({speed['after_over_before']:.2f}x, {speed['backend']}, batch {speed['batch']})")
    return line

