"""`deploy`: checkpoint -> verified, benchmarked ONNX (fp32/fp16/int8) and TensorRT artifacts + report.

Every option is validated before any work; every step is keyed on its inputs (see state.py), so a
second run with unchanged inputs reuses everything and says so; every file is written atomically.
"""

from __future__ import annotations

import logging
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pfdeploy import __version__
from pfdeploy._io import sha256_file, write_bytes_atomic, write_json_atomic
from pfdeploy.deploy import steps
from pfdeploy.deploy.options import DeployOptions, check_options
from pfdeploy.deploy.state import StepState, fingerprint_dir, key_of
from pfdeploy.runtime.verify import judged_sources, nonfinite_summary

log = logging.getLogger(__name__)

REPORT_FORMAT = "pfdeploy-deploy-report"
REPORT_VERSION = 1


def verify_summary(result: dict, precision: str) -> dict[str, Any]:
    """Verdict plus worst case over the judged sources: max |error|, max relative error, top-1/top-5
    agreement, cosine; every source's statistics are kept under `sources`."""
    sources = result.get("sources", {})
    judged = judged_sources(precision, sources)
    if not judged:
        return {"passed": False, "judged_on": [], "sources": sources}
    chosen = [sources[name] for name in judged]
    nonfinite = nonfinite_summary(sources)  # NaN/Inf on any source, judged or not, fails

    def worst(key: str, pick) -> float | None:
        values = [s.get(key) for s in chosen]
        return None if any(v is None for v in values) else pick(values)

    return {
        "passed": all(s["passed"] for s in chosen) and not nonfinite,
        "judged_on": judged,
        "failed_sources": [name for name, s in sources.items() if not s["passed"]],
        "nonfinite": nonfinite,
        "max_abs": worst("max_abs", max),
        "max_rel": worst("max_rel", max),
        "top1_agreement": worst("top1", min),
        "top5_agreement": worst("top5", min),
        "cosine": worst("cosine", min),
        "sources": sources,
    }


def verification_failures(report: dict[str, Any]) -> list[str]:
    """'FILE' for every artifact of `report` that failed verification ('FILE: why' for NaN/Inf logits)."""
    failed = []
    for artifact in report["artifacts"]:
        verify = artifact.get("verify") or {}
        if not verify.get("passed"):
            why = verify.get("nonfinite")
            name = artifact.get("label", artifact["file"])
            failed.append(f"{name}: {why}" if why else name)
    return failed


def _artifact_entry(path: Path, fmt: str, precision: str, step: dict) -> dict[str, Any]:
    return {
        "file": path.name,
        "label": path.name,  # unique per row: an OpenVINO variant of the same file is `<file> [openvino]`
        "backend": "tensorrt" if fmt == "tensorrt" else "onnxruntime",
        "format": fmt,
        "precision": precision,  # what the row is verified as (an OpenVINO bf16 row runs the fp32 file)
        "graph_precision": precision,  # the file's own pfdeploy.precision
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        "reused": bool(step.get("reused")),
        "seconds": step.get("seconds"),
    }


def _onnx_artifacts(state: StepState, opts: DeployOptions, checkpoint_sha: str) -> dict[str, dict]:
    """Export, convert and quantize: {precision: step result with "path"}; fp32 is always made
    (the source of the others) but only the requested precisions are verified and benchmarked."""
    made = {"fp32": steps.export_fp32(state, opts, checkpoint_sha)}
    fp32 = made["fp32"]["path"]
    if "fp16" in opts.precisions:
        made["fp16"] = steps.fp16_graph(state, opts, fp32)
    if "int8" in opts.precisions:
        made["int8"] = steps.int8_graph(state, opts, fp32)
    return made


def _engines(state: StepState, opts: DeployOptions, env, onnx_entries: dict[str, dict]) -> list[dict]:
    built = []
    if env is None:
        return built
    for precision, entry in onnx_entries.items():
        if precision == "int8" and opts.int8_target == "cpu":
            log.info("no INT8 engine: the --int8-target cpu graph is for ONNX Runtime CPU, not TensorRT")
            continue
        result = steps.build_engine(state, opts, opts.out / entry["file"], precision)
        plan = Path(result["path"])
        item = _artifact_entry(plan, "tensorrt", precision, result)
        item["verify"] = verify_summary(steps.verify_engine(opts, plan, opts.out / entry["file"], precision),
                                        precision)
        built.append(item)
    return built


def _accuracy(state: StepState, opts: DeployOptions, artifacts: list[dict], fp32: Path,
              checkpoint_sha: str) -> dict | None:
    """Top-1/top-5 of PyTorch (the reference) and of every artifact on labelled --val-data."""
    if not steps.has_class_folders(opts.val_data):
        return None
    fp32_sha = sha256_file(fp32)
    reference = steps.accuracy(state, opts, fp32, fp32_sha, checkpoint_sha, backend="torch")["result"]
    for artifact in artifacts:
        artifact["accuracy"] = steps.accuracy(state, opts, opts.out / artifact["file"], artifact["sha256"],
                                              checkpoint_sha, backend=artifact["backend"],
                                              precision=artifact.get("compute_precision"),
                                              label=artifact["label"])["result"]
    return reference


def _bench(state: StepState, opts: DeployOptions, artifacts: list[dict]) -> dict:
    """Benchmark every artifact in one interleaved run; rows go into each entry's `bench`, the full
    pfdeploy.bench/1 JSON is returned (written as bench.json)."""
    from pfdeploy.deploy.bench import bench_artifacts, rows_for

    targets = [(a["label"], opts.out / a["file"], a["backend"],
                {"precision": a["compute_precision"]} if a.get("compute_precision") else {}) for a in artifacts]
    inputs = {"artifacts": [[a["sha256"], a["label"], a["backend"], a.get("compute_precision")] for a in artifacts],
              "batches": opts.bench_batches,
              "seconds": opts.bench_seconds, "host": platform.node(), "cpu": platform.processor(),
              "version": __version__}
    step = state.run("bench", inputs, [],
                     lambda: bench_artifacts(targets, opts.bench_batches, opts.bench_seconds))
    for artifact in artifacts:
        artifact["bench"] = rows_for(step["result"], artifact["label"])
    return step["result"]


def _model_section(opts: DeployOptions, checkpoint_sha: str) -> dict[str, Any]:
    return {
        "name": opts.model, "label": opts.stem, "num_classes": opts.num_classes, "overrides": opts.overrides,
        "checkpoint": None if opts.checkpoint is None else str(opts.checkpoint),
        "checkpoint_sha256": checkpoint_sha, "random_weights": opts.checkpoint is None,
        "preprocess": opts.preprocess,
    }


def report_from_run(opts: DeployOptions, state: StepState, checkpoint_sha: str, source: Path,
                    artifacts: list[dict], reference: dict | None, engines: tuple[dict | None, str]) -> dict:
    """The report.json dict of one run (see README, "Deploy")."""
    from pfdeploy.runtime.bench import environment

    env, note = engines
    return {
        "format": REPORT_FORMAT,
        "report_version": REPORT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": _model_section(opts, checkpoint_sha),
        "options": opts.to_dict(),
        "inputs_key": key_of({"options": opts.to_dict(), "checkpoint": checkpoint_sha,
                              "calib": fingerprint_dir(opts.calib_data), "val": fingerprint_dir(opts.val_data)}),
        "source_fp32": source.name,
        "accuracy_reference": reference,
        "engines": {"status": "built" if env else ("not requested" if opts.engines == "no" else "skipped"),
                    "note": note},
        "steps": state.history,
        "reused": all(s["reused"] for s in state.history),
        "artifacts": artifacts,
        "environment": environment(),
    }


def _verified_onnx(state: StepState, opts: DeployOptions, made: dict, checkpoint_sha: str) -> list[dict]:
    artifacts = []
    for precision in opts.precisions:
        path = made[precision]["path"]
        entry = _artifact_entry(path, "onnx", precision, made[precision])
        verified = steps.verify_onnx(state, opts, path, entry["sha256"], checkpoint_sha)
        entry["verify"] = verify_summary(verified["result"], precision)
        entry["tensorrt_check"] = steps.tensorrt_check(opts, path, precision)
        artifacts.append(entry)
    return artifacts


def _openvino_variants(state: StepState, opts: DeployOptions, made: dict, plan: dict, checkpoint_sha: str,
                       onnx_entries: dict[str, dict]) -> list[dict]:
    """The OpenVINO variants of the deployed graphs (pfdeploy.deploy.openvino), verified with the
    openvino backend against PyTorch; each keeps its graph's TensorRT check (the same file)."""
    artifacts = []
    for variant in plan["variants"]:
        path = made[variant.graph]["path"]
        entry = _artifact_entry(path, "onnx", variant.precision, made[variant.graph])
        entry.update(label=variant.label(path.name), backend="openvino", compute_precision=variant.compute,
                     graph_precision=variant.graph,
                     tensorrt_check=onnx_entries[variant.graph].get("tensorrt_check"))
        verified = steps.verify_onnx(state, opts, path, entry["sha256"], checkpoint_sha, backend="openvino",
                                     precision=variant.compute, label=entry["label"])
        entry["verify"] = verify_summary(verified["result"], variant.precision)
        artifacts.append(entry)
    return artifacts


def _pt2_packages(state: StepState, opts: DeployOptions, plan: dict, checkpoint_sha: str) -> list[dict]:
    """The AOTInductor .pt2 packages of `steps.pt2_plan`, each verified against PyTorch in its pt2 session."""
    artifacts = []
    for precision in plan["precisions"]:
        made = steps.pt2_package(state, opts, precision, plan["device"], checkpoint_sha)
        entry = _artifact_entry(made["path"], "pt2", precision, made)
        entry.update(backend="pt2", device=plan["device"],
                     tensorrt_check={"checked": False, "why": "an AOTInductor package, not an ONNX graph"})
        verified = steps.verify_onnx(state, opts, made["path"], entry["sha256"], checkpoint_sha, backend="pt2")
        entry["verify"] = verify_summary(verified["result"], precision)
        artifacts.append(entry)
    return artifacts


def trt_check_failures(report: dict[str, Any]) -> list[str]:
    """'FILE: first violation' for every graph meant for TensorRT that is outside its documented support."""
    failed = []
    for artifact in report["artifacts"]:
        check = artifact.get("tensorrt_check") or {}
        if artifact.get("backend") == "openvino":
            continue  # the same file's onnxruntime row reports it
        if check.get("checked") and not check.get("passed"):
            first = check["violations"][0]
            failed.append(f"{artifact['file']}: node {first['node']!r} ({first['op_type']}) breaks {first['rule']}"
                          f" (+{len(check['violations']) - 1} more)")
    return failed


def deploy(opts: DeployOptions) -> dict[str, Any]:
    """Run the whole pipeline into `opts.out`; returns the report dict (also report.json / report.md)."""
    import onnxruntime  # noqa: F401 - imported so that environment() reports its version
    import torch

    from pfdeploy.deploy.openvino import openvino_plan, plan_summary
    from pfdeploy.deploy.report import fastest_verified, markdown_from_report, plot_from_bench

    opts = check_options(opts)
    engines = steps.engine_environment(opts.engines)  # `--engines yes` fails here, before any work
    ov_plan = openvino_plan(opts.openvino, opts.precisions)  # so does `--openvino yes` without OpenVINO
    from pfdeploy.export.pt2 import pt2_toolchain_problem

    cuda = torch.cuda.is_available()
    toolchain = None if opts.pt2 == "no" or (opts.pt2 == "auto" and not cuda) else \
        pt2_toolchain_problem("cuda" if cuda else "cpu")
    pt2 = steps.pt2_plan(opts.pt2, opts.precisions, cuda, toolchain)  # `--pt2 yes` without a toolchain fails here
    opts.out.mkdir(parents=True, exist_ok=True)
    state = StepState(opts.out, force=opts.force)
    checkpoint_sha = sha256_file(opts.checkpoint) if opts.checkpoint else "random"
    if opts.checkpoint is None:
        log.warning("no --checkpoint: %s is deployed with RANDOM weights (labelled so in the report)",
                    opts.model)

    made = _onnx_artifacts(state, opts, checkpoint_sha)
    artifacts = _verified_onnx(state, opts, made, checkpoint_sha)
    artifacts += _engines(state, opts, engines[0], {a["precision"]: a for a in artifacts})
    artifacts += _openvino_variants(state, opts, made, ov_plan, checkpoint_sha,
                                    {a["precision"]: a for a in artifacts if a["format"] == "onnx"})
    artifacts += _pt2_packages(state, opts, pt2, checkpoint_sha)
    reference = _accuracy(state, opts, artifacts, made["fp32"]["path"], checkpoint_sha)
    bench = _bench(state, opts, artifacts)
    write_json_atomic(opts.out / "bench.json", bench)
    report = report_from_run(opts, state, checkpoint_sha, made["fp32"]["path"], artifacts, reference, engines)
    report["openvino"] = plan_summary(ov_plan, [a["label"] for a in artifacts if a["backend"] == "openvino"])
    report["pt2"] = {**pt2, "packages": [a["file"] for a in artifacts if a["format"] == "pt2"]}
    report["fastest_verified"] = fastest_verified(artifacts)
    plot = plot_from_bench(bench, opts.out / "throughput.png")
    report["plot"] = plot.name if plot else None
    write_json_atomic(opts.out / "report.json", report)
    write_bytes_atomic(opts.out / "report.md", markdown_from_report(report).encode())
    return report
