"""Interleaved timing returns one sample per round for each workload, in order-rotated rounds."""

from __future__ import annotations

import time

from pfdeploy.runtime.timing import time_interleaved


def test_time_interleaved_rounds_and_ordering():
    calls = []
    workloads = {"a": lambda: calls.append("a"), "b": lambda: (calls.append("b"), time.sleep(0.002))}
    samples = time_interleaved(workloads, rounds=4, min_seconds=0.005, warmup=1)
    assert {k: len(v) for k, v in samples.items()} == {"a": 4, "b": 4}
    assert min(samples["b"]) >= 0.002 > max(samples["a"])
    assert calls[:2] == ["a", "b"]


def test_round_order_gives_every_workload_both_neighbours():
    from pfdeploy.runtime.timing import round_order

    names = ["a", "b", "c"]
    orders = [round_order(names, i) for i in range(6)]
    assert orders[0] == ["a", "b", "c"] and orders[1] == ["c", "b", "a"] and orders[2] == ["b", "c", "a"]
    assert all(sorted(order) == names for order in orders)
    follows = {(order[i - 1], order[i]) for order in orders[:2] for i in range(1, 3)}
    assert ("a", "b") in follows and ("b", "a") in follows  # b follows a, and a follows b
    assert {order[0] for order in orders} == set(names)  # each goes first at some point
