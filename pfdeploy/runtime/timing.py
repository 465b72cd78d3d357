"""Interleaved timing: several workloads measured round-robin so machine noise hits all alike."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def time_interleaved(
    workloads: dict[str, Callable[[], object]],
    rounds: int = 7,
    min_seconds: float = 0.2,
    warmup: int = 2,
) -> dict[str, list[float]]:
    """Seconds per call of each workload, one sample per round, workloads alternating.

    Each round runs every workload in turn (the order rotates every round) for at least
    `min_seconds`, recording the mean time per call. Returns {name: [seconds per call, ...]}.
    """
    names = list(workloads)
    for name in names:
        for _ in range(warmup):
            workloads[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
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
