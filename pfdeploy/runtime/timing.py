"""Interleaved timing: several workloads measured round-robin so machine noise hits all alike."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def round_order(names: list[str], index: int) -> list[str]:
    """The order of round `index`: `names` rotated by `index // 2`, reversed in odd rounds."""
    shift = (index // 2) % len(names)
    order = names[shift:] + names[:shift]
    return order[::-1] if index % 2 else order


def time_interleaved(
    workloads: dict[str, Callable[[], object]],
    rounds: int = 7,
    min_seconds: float = 0.2,
    warmup: int = 2,
) -> dict[str, list[float]]:
    """Seconds per call of each workload, one sample per round, workloads alternating.

    Each round runs every workload in turn for at least `min_seconds`, recording the mean time per
    call. The order rotates every round and runs backwards every other round, so no workload always
    follows the same one (a workload's predecessor can move its time by about 10% on a shared
    machine). Returns {name: [seconds per call, ...]}.
    """
    names = list(workloads)
    for name in names:
        for _ in range(warmup):
            workloads[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        for name in round_order(names, index):
            fn, calls, start = workloads[name], 0, time.perf_counter()
            while True:
                fn()
                calls += 1
                elapsed = time.perf_counter() - start
                if elapsed >= min_seconds:
                    break
            samples[name].append(elapsed / calls)
    return samples


def latency_stats(seconds: list[float]) -> dict[str, float]:
    """Median and p50/p90/p99 of a list of per-call times, in milliseconds."""
    ms = np.asarray(seconds) * 1e3
    return {
        "median_ms": float(np.median(ms)),
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
    }
