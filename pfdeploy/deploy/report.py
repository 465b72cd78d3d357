"""report.md (tables a person reads) and an optional throughput plot, both from the report dict."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pfdeploy.calibration.sensitivity import within_points

log = logging.getLogger(__name__)


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A GitHub-style markdown table of `rows` restricted to `columns`."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _verdict(verify: dict[str, Any]) -> str:
    if not verify:
        return "-"
    word = "PASS" if verify.get("passed") else "FAIL"
    failed = verify.get("failed_sources") or []
    if verify.get("passed") and failed:
        return f"{word} on {', '.join(verify['judged_on'])} ({', '.join(failed)} outside tolerance)"
    return f"{word} ({', '.join(failed)})" if failed else word


def _trt_verdict(check: dict[str, Any] | None) -> str:
    if not check:
        return "-"
    if not check.get("checked"):
        return "not for TensorRT"
    if check.get("passed"):
        return f"PASS ({check['trt_version']})"
    return f"FAIL ({len(check['violations'])} violations)"


def _summary_row(artifact: dict[str, Any]) -> dict[str, Any]:
    verify = artifact.get("verify") or {}
    bench = [b for b in artifact.get("bench") or [] if b.get("mode") == "end_to_end" and "img_per_s" in b]
    best = max(bench, key=lambda b: b["img_per_s"], default={})
    agree = verify.get("top1_agreement")
    return {
        "artifact": artifact.get("label", artifact["file"]),
        "format": artifact["format"],
        "backend": artifact.get("backend"),
        "precision": artifact["precision"],
        "size MB": f"{artifact['bytes'] / 1e6:.2f}",
        "max abs err": verify.get("max_abs"),
        "max rel err": verify.get("max_rel"),
        "top-1 agree": None if agree is None else f"{100 * agree:.1f}%",
        "top-1 acc": None if not artifact.get("accuracy") else f"{artifact['accuracy']['top1']:.2f}%",
        "verify": _verdict(verify),
        "TensorRT check": _trt_verdict(artifact.get("tensorrt_check")),
        "best img/s": None if not best else f"{best['img_per_s']:.1f} (b{best['batch']})",
        "reused": "yes" if artifact.get("reused") else "no",
    }


SUMMARY_COLUMNS = ["artifact", "format", "backend", "precision", "size MB", "max abs err", "max rel err", "top-1 agree",
                   "top-1 acc", "verify", "TensorRT check", "best img/s", "reused"]
BENCH_COLUMNS = ["batch", "mode", "img/s", "p50 ms", "p90 ms", "p99 ms"]
VERIFY_COLUMNS = ["source", "samples", "max_abs", "max_rel", "cosine", "top1", "top5", "passed", "decides"]


def _artifact_section(artifact: dict[str, Any]) -> list[str]:
    verify = artifact.get("verify") or {}
    lines = [f"### {artifact.get('label', artifact['file'])}", "",
             f"{artifact['format']} {artifact['precision']} on {artifact.get('backend')}, "
             f"{artifact['bytes'] / 1e6:.2f} MB, "
             f"sha256 `{artifact['sha256'][:16]}`", ""]
    judged = verify.get("judged_on") or []
    sources = [{"source": name, **stats, "decides": "yes" if name in judged else "no"}
               for name, stats in (verify.get("sources") or {}).items()]
    if sources:
        against = ("the ONNX graph it was compiled from (itself verified against PyTorch)"
                   if artifact["format"] == "tensorrt" else "PyTorch")
        lines += [f"Verification against {against}:", "", markdown_table(sources, VERIFY_COLUMNS), ""]
    check = artifact.get("tensorrt_check") or {}
    if check.get("checked"):
        lines += [f"TensorRT check ({check['source']}): " + (
            "PASS, within the documented ONNX operator and type support." if check["passed"]
            else f"FAIL, {len(check['violations'])} violation(s):"), ""]
        lines += [f"- node `{v['node']}` ({v['op_type']}) breaks {v['rule']}: {v['detail']}"
                  for v in check.get("violations", [])[:20]]
        lines += [""] if check.get("violations") else []
    bench = [{"batch": b["batch"], "mode": b["mode"],
              "img/s": f"{b['img_per_s']:.1f}" if "img_per_s" in b else f"skipped: {b.get('skipped')}",
              "p50 ms": b.get("p50_ms"), "p90 ms": b.get("p90_ms"), "p99 ms": b.get("p99_ms")}
             for b in artifact.get("bench") or []]
    if bench:
        lines += ["Throughput and latency (end_to_end: host batch in, logits out; device: GPU only):", "",
                  markdown_table(bench, BENCH_COLUMNS), ""]
    return lines


def _model_line(report: dict[str, Any]) -> str:
    model = report["model"]
    weights = ("**RANDOM WEIGHTS** (no checkpoint: the numbers measure speed and conversion fidelity, "
               "not accuracy)" if model["random_weights"]
               else f"checkpoint `{model['checkpoint']}` (sha256 `{model['checkpoint_sha256'][:16]}`)")
    return f"Model `{model['name']}` as `{model['label']}`, {weights}."


def tables_from_report(report: dict[str, Any]) -> str:
    """The summary table plus the engine status line (what the CLI prints)."""
    rows = [_summary_row(a) for a in report["artifacts"]]
    columns = [c for c in SUMMARY_COLUMNS if c != "top-1 acc" or report.get("accuracy_reference")]
    lines = [_model_line(report), "", markdown_table(rows, columns), ""]
    ref = report.get("accuracy_reference")
    if ref:
        lines.append(f"Accuracy on {ref['images']} labelled images of --val-data: PyTorch reference top-1 "
                     f"{ref['top1']:.2f}%, top-5 {ref['top5']:.2f}%.")
    lines.append("Max error and top-1 agreement: artifact vs PyTorch logits on the same inputs, worst judged "
                 "source (a TensorRT engine: against the ONNX graph it was compiled from, itself verified against "
                 "PyTorch). INT8 is judged on --val-data images when given (noise lies outside the "
                 "calibration range); every source is listed in report.md.")
    lines.append(f"TensorRT engines: {report['engines']['status']} ({report['engines']['note']})")
    lines += _openvino_lines(report)
    lines.append("TensorRT check: each graph meant for TensorRT against TensorRT's documented ONNX operator and "
                 "type support (`pfdeploy check-trt`); a static check: kernels, tactics and accuracy inside "
                 "TensorRT are not covered.")
    if "int8" in report["options"]["precisions"] and report["options"]["int8_target"] == "tensorrt":
        lines.append("The INT8 graph is the one TensorRT compiles (symmetric Q/DQ); ONNX Runtime CPU runs part "
                     "of it in float, so its CPU speed is not INT8 speed (--int8-target cpu makes a CPU graph).")
    lines += _int8_budget_lines(report)
    if report.get("reused"):
        lines.append("Every step was reused from the previous run (inputs unchanged).")
    return "\n".join(lines)


def markdown_from_report(report: dict[str, Any]) -> str:
    """The whole report.md."""
    env = report["environment"]
    lines = [f"# pfdeploy deploy report: {report['model']['label']}", "", tables_from_report(report), ""]
    lines += [f"Source graph: `{report['source_fp32']}`. Created {report['created']} with pfdeploy "
              f"{env.get('pfdeploy')}, torch {env.get('torch')}, onnxruntime {env.get('onnxruntime')}, "
              f"openvino {env.get('openvino') or 'not used'} "
              f"on {env.get('cpu')} ({env.get('cpu_count')} CPUs), GPU {env.get('gpu') or 'none'}.", ""]
    if report.get("plot"):
        lines += [f"![throughput]({report['plot']})", ""]
    lines += _int8_sensitivity_section(report)
    lines += ["## Artifacts", ""]
    for artifact in report["artifacts"]:
        lines += _artifact_section(artifact)
    lines += ["## Steps", "", markdown_table(
        [{"step": s["step"], "reused": "yes" if s["reused"] else "no", "seconds when run": s["seconds"]}
         for s in report["steps"]], ["step", "reused", "seconds when run"]), ""]
    return "\n".join(lines)


def _failed_int8_graphs(report: dict[str, Any]) -> dict[str, str]:
    """{INT8 ONNX file: its sha256} for every INT8 graph with a row (ONNX Runtime or OpenVINO) that failed
    verification or lost more than a point of top-1 against the PyTorch reference."""
    reference = (report.get("accuracy_reference") or {}).get("top1")
    failed = {}
    for artifact in report["artifacts"]:
        if artifact["precision"] != "int8" or artifact["format"] != "onnx":
            continue
        top1 = (artifact.get("accuracy") or {}).get("top1")
        lost = reference is not None and top1 is not None and not within_points(reference - top1, 1.0)
        if not (artifact.get("verify") or {}).get("passed") or lost:
            failed[artifact["file"]] = artifact["sha256"]
    return failed


def _int8_budget_lines(report: dict[str, Any]) -> list[str]:
    """What `--int8-max-drop` did, from the INT8 graph's `pfdeploy.int8_budget` metadata."""
    if report["options"].get("int8_max_drop") is None or not report["options"].get("out"):
        return []
    from pfdeploy.calibration.budget import BudgetResult, budget_summary
    from pfdeploy.errors import PfdeployError
    from pfdeploy.export import read_metadata

    lines = []
    for artifact in report["artifacts"]:
        if artifact["precision"] != "int8" or artifact["format"] != "onnx" or artifact.get("backend") != "onnxruntime":
            continue
        try:
            text = read_metadata(Path(report["options"]["out"]) / artifact["file"])["pfdeploy.int8_budget"]
            lines.append(f"{artifact['file']}: {budget_summary(BudgetResult.from_json(text))}.")
        except (PfdeployError, KeyError, TypeError, ValueError) as exc:
            log.warning("%s: no budget record (%s)", artifact["file"], exc)
    return lines


def _int8_sensitivity_section(report: dict[str, Any]) -> list[str]:
    """When INT8 fails: the sensitivity analysis `deploy` wrote beside the graph (pfdeploy.calibration.
    sensitivity), or how to make one."""
    from pfdeploy.calibration.quantize import sensitivity_paths
    from pfdeploy.calibration.sensitivity import TABLE_COLUMNS, summary_line, table_rows
    from pfdeploy.errors import PfdeployError
    from pfdeploy.limits import read_json_file

    lines = []
    failed = _failed_int8_graphs(report)
    out = report["options"].get("out")
    for file, sha in failed.items() if out else ():
        json_path, png_path = sensitivity_paths(Path(out) / file)
        lines += [f"## INT8 sensitivity: {file}", ""]
        analysis = None
        if json_path.is_file():
            try:
                analysis = read_json_file(json_path, "sensitivity analysis", "it is left out of the report")
            except PfdeployError as exc:
                log.warning("%s", exc)
        if not isinstance(analysis, dict) or analysis.get("int8_sha256") != sha:
            lines += [f"{file} failed; no analysis of this graph was made (its own check against the FP32 graph "
                      "passed). Run `pfdeploy quantize FP32.onnx --calib-data DIR --val-data DIR --analyze` for "
                      "one.", ""]
            continue
        lines += [f"{summary_line(analysis)}. Quantized tensors ranked by the noise their own INT8 quantizer adds "
                  "(local SQNR, whole tensor and median channel; PF = read or written by a max-pool or avg-pool); "
                  "`float:` what keeping that tensor in float gives. Full analysis: "
                  f"`{json_path.name}`.", "",
                  markdown_table(table_rows(analysis, 10), TABLE_COLUMNS), ""]
        if png_path.is_file():
            lines += [f"![sensitivity]({png_path.name})", ""]
        lines += ["Keep the worst in float with `--int8-max-drop POINTS` (with --val-data), or by name with "
                  "`pfdeploy quantize ... --exclude NODE`.", ""]
    return lines


def plot_from_bench(bench: dict[str, Any], path: Path) -> Path | None:
    """Throughput vs batch (pfdeploy.runtime.bench.plot_throughput) when matplotlib is installed."""
    from pfdeploy.errors import MissingDependencyError
    from pfdeploy.runtime.bench import plot_throughput

    try:
        return plot_throughput(bench, path)
    except MissingDependencyError as exc:
        log.info("report without plot: %s", exc)
        return None


def fastest_verified(artifacts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The verified artifact with the highest end-to-end img/s at the largest benchmarked batch:
    {label, file, backend, precision, batch, img_per_s}; None when none passed and was measured."""
    best = None
    for artifact in artifacts:
        if not (artifact.get("verify") or {}).get("passed"):
            continue
        rows = [b for b in artifact.get("bench") or [] if b.get("mode") == "end_to_end" and "img_per_s" in b]
        for row in rows:
            key = (row["batch"], row["img_per_s"])
            if best is None or key > (best["batch"], best["img_per_s"]):
                best = {"label": artifact.get("label", artifact["file"]), "file": artifact["file"],
                        "backend": artifact.get("backend"), "precision": artifact["precision"],
                        "batch": row["batch"], "img_per_s": row["img_per_s"]}
    return best


def _openvino_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    ov = report.get("openvino")
    if ov:
        added = ", ".join(ov["variants"]) or "none"
        skipped = "; ".join(f"{s['variant']} skipped: {s['reason']}" for s in ov.get("skipped", []))
        lines.append(f"OpenVINO: {ov['status']} ({ov['note']}): {added}" + (f"; {skipped}" if skipped else "") + ".")
    fastest = report.get("fastest_verified")
    if fastest:
        lines.append(f"Fastest verified artifact: {fastest['file']} on {fastest['backend']} ({fastest['precision']}),"
                     f" {fastest['img_per_s']:.1f} img/s at batch {fastest['batch']}.")
    return lines
