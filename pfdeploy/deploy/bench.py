"""Benchmark the deployed artifacts side by side with pfdeploy.runtime.bench, and read its results."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def bench_artifacts(targets: list, batches: tuple[int, ...], seconds: float) -> dict[str, Any]:
    """One interleaved `benchmark` run over every artifact (pfdeploy.bench/1 JSON).

    targets: paths (labelled by file name, backend chosen by `load`), or (label, path, backend,
    load options) tuples, e.g. ("m.int8.onnx [openvino]", path, "openvino", {}).
    """
    from pfdeploy.runtime import load
    from pfdeploy.runtime.bench import benchmark

    sessions = []
    try:
        for target in targets:  # labelled by file name, so the table and plot stay readable
            label, path, backend, options = target if isinstance(target, tuple) else (
                Path(target).name, target, "auto", {})
            sessions.append((label, load(path, backend=backend, **options)))
        return benchmark(sessions, batches, seconds, warmup=2)
    finally:
        for _, session in sessions:
            session.close()


def rows_for(bench: dict[str, Any], path: Path | str) -> list[dict[str, Any]]:
    """The measured rows of one artifact (a path, or a target's label): batch, mode, img/s, latency
    percentiles (skips noted)."""
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
