"""Benchmark the deployed artifacts side by side with pfdeploy.runtime.bench, and read its results."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def bench_artifacts(paths: list[Path], batches: tuple[int, ...], seconds: float) -> dict[str, Any]:
    """One interleaved `benchmark` run over every artifact (pfdeploy.bench/1 JSON)."""
    from pfdeploy.runtime import load
    from pfdeploy.runtime.bench import benchmark

    sessions = []
    try:
        for path in paths:  # labelled by file name, so the table and plot stay readable
            sessions.append((Path(path).name, load(path)))
        return benchmark(sessions, batches, seconds, warmup=2)
    finally:
        for _, session in sessions:
            session.close()


def rows_for(bench: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    """The measured rows of one artifact: batch, mode, img/s, latency percentiles (skips noted)."""
    rows = []
    for r in bench.get("results", []):
        if Path(r["label"]).name != Path(path).name:
            continue
        if "skipped" in r:
            rows.append({"batch": r["batch"], "mode": r["mode"], "skipped": r["skipped"]})
            continue
        lat = r["latency_ms"]
        rows.append({"batch": r["batch"], "mode": r["mode"], "img_per_s": r["images_per_second"],
                     "p50_ms": lat["p50"], "p90_ms": lat["p90"], "p99_ms": lat["p99"]})
    return rows
