"""Interleaved timing returns one sample per round for each workload, in order-rotated rounds."""

from __future__ import annotations

import time

from pfdeploy.runtime.timing import latency_stats, time_interleaved


def test_time_interleaved_rounds_and_ordering():
    calls = []
    workloads = {"a": lambda: calls.append("a"), "b": lambda: (calls.append("b"), time.sleep(0.002))}
    samples = time_interleaved(workloads, rounds=4, min_seconds=0.005, warmup=1)
    assert {k: len(v) for k, v in samples.items()} == {"a": 4, "b": 4}
    assert min(samples["b"]) >= 0.002 > max(samples["a"])
    assert calls[:2] == ["a", "b"]


def test_latency_stats_percentiles():
    stats = latency_stats([0.001 * i for i in range(1, 101)])
    assert abs(stats["p50_ms"] - 50.5) < 1e-9 and stats["p99_ms"] > stats["p90_ms"] > stats["p50_ms"]
