"""The `pfdeploy` command line: parses arguments, calls the stage functions, prints.

Each subcommand is a pair: `add_<name>(subparsers)` declares its arguments and `run_<name>(args)`
does the work by calling the package's public functions. A PfdeployError becomes one line on
stderr and a non-zero exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence

from pfdeploy import __version__
from pfdeploy._text import positive_ints, text_table
from pfdeploy.errors import PfdeployError

# --- list / info ---------------------------------------------------------------------------------


def add_list(sub) -> None:
    p = sub.add_parser("list", help="list the registered models")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run_list(args) -> int:
    from pfdeploy.models import list_models, model_summary

    rows = [model_summary(name) for name in list_models()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    shown = [
        {
            "name": r["name"],
            "paper": r["paper_name"],
            "params": f"{r['parameters'] / 1e6:.2f}M",
            "MACs": f"{r['macs'] / 1e9:.2f}G",
            "PF layers": r["pf_layers"],
            "input": "x".join(map(str, r["input_size"])),
        }
        for r in rows
    ]
    print(text_table(shown, ["name", "paper", "params", "MACs", "PF layers", "input"]))
    return 0


def add_info(sub) -> None:
    p = sub.add_parser("info", help="show a model's config, or an ONNX file's metadata and node counts")
    p.add_argument("name", nargs="?", help="registered model name or alias")
    p.add_argument("--onnx", metavar="FILE", help="describe an ONNX file instead of a model")


def run_info(args) -> int:
    if args.onnx:
        from pfdeploy.engines.trt_check import check_trt
        from pfdeploy.export import describe_onnx

        info = describe_onnx(args.onnx)
        info["tensorrt_check"] = check_trt(args.onnx).to_dict()  # see `pfdeploy check-trt`
        print(json.dumps(info, indent=2))
        return 0
    if not args.name:
        raise PfdeployError("info needs a model name (see `pfdeploy list`) or --onnx FILE")
    from pfdeploy.models import model_summary

    print(json.dumps(model_summary(args.name), indent=2))
    return 0


# --- export / verify -----------------------------------------------------------------------------


def _batch_arg(value: str):
    if value == "dynamic":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch must be 'dynamic' or an integer, not {value!r}") from None


def add_export(sub) -> None:
    p = sub.add_parser("export", help="export a registered model to ONNX (fp32/fp16, dynamic batch) or an "
                       "AOTInductor .pt2 package")
    p.add_argument("name", help="registered model name or alias (see `pfdeploy list`)")
    p.add_argument("--checkpoint", metavar="PATH", help="weights (.pth state_dict); without it: RANDOM weights")
    p.add_argument("--output", "-o", metavar="PATH", help="output file (default: NAME[.fp16][.uint8].onnx, "
                   "or .pt2 with --format pt2)")
    p.add_argument("--format", choices=("onnx", "pt2"), default="onnx",
                   help="onnx (default) or pt2: torch.export + AOTInductor, compiled for --device (minutes for "
                        "full-size models)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="pt2: the device the package runs on (default cpu)")
    p.add_argument("--fused", action="store_true",
                   help="pt2 on cuda: the PF layers through pfdeploy's fused Triton kernel (pfdeploy[kernels])")
    p.add_argument("--batch", type=_batch_arg, default="dynamic", help="'dynamic' (default) or a fixed N")
    p.add_argument("--img-size", type=int, metavar="N", help="input resolution (default: the model's)")
    p.add_argument("--opset", type=int, help="ONNX opset, 18..23 (default 20: GELU as one Gelu op)")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    p.add_argument("--input-format", choices=("float-nchw", "uint8-nhwc"), default="float-nchw",
                   help="uint8-nhwc: raw RGB bytes in, normalization and layout change inside the graph")
    p.add_argument("--fp16-io", action="store_true", help="fp16 graphs: FP16 input/output instead of FP32")
    p.add_argument("--num-classes", type=int, help="classifier size of the checkpoint (default: registry's)")
    p.add_argument("--override", action="append", metavar="KEY=VALUE",
                   help="create_model override, JSON value (e.g. layers=[1,1,1,1]); repeatable")


def run_export(args) -> int:
    from pfdeploy.deploy.options import parse_overrides
    from pfdeploy.export import describe_onnx, onnx_from_model
    from pfdeploy.export.onnx import DEFAULT_OPSET
    from pfdeploy.models import resolve_name

    name = resolve_name(args.name)
    if args.num_classes is not None and args.num_classes < 1:
        raise PfdeployError(f"--num-classes must be >= 1, got {args.num_classes}")
    suffix = ("" if args.precision == "fp32" else f".{args.precision}") + (
        ".uint8" if args.input_format == "uint8-nhwc" else "")
    common = dict(checkpoint=args.checkpoint, batch=args.batch, img_size=args.img_size, precision=args.precision,
                  input_format=args.input_format, num_classes=args.num_classes,
                  overrides=parse_overrides(args.override) or None)
    if args.format == "pt2":
        return _export_pt2(args, name, suffix, common)
    if args.device or args.fused:
        raise PfdeployError("--device and --fused apply to --format pt2; an ONNX graph runs wherever its backend does")
    output = args.output or f"{name}{suffix}.onnx"
    path = onnx_from_model(name, output, opset=args.opset or DEFAULT_OPSET, keep_io_types=not args.fp16_io,
                           **common)
    info = describe_onnx(path)
    print(f"{path}: {info['nodes']} nodes, {info['parameters'] / 1e6:.2f}M parameters, "
          f"input {info['inputs'][0]['dtype']}{info['inputs'][0]['shape']}, "
          f"weights {info['metadata'].get('pfdeploy.checkpoint_sha256', '?')[:12]}")
    return 0


def _export_pt2(args, name: str, suffix: str, common: dict) -> int:
    """`export --format pt2`: an AOTInductor package (pfdeploy.export.pt2)."""
    from pfdeploy.export.pt2 import describe_pt2, pt2_from_model

    if args.opset is not None or args.fp16_io:
        raise PfdeployError("--opset and --fp16-io apply to ONNX graphs; drop them with --format pt2 (an fp16 "
                            "package keeps FP32 input and output)")
    device = args.device or "cpu"
    path = pt2_from_model(name, args.output or f"{name}{suffix}.pt2", device=device, fused=args.fused, **common)
    info = describe_pt2(path)
    meta = info["metadata"]
    print(f"{path}: AOTInductor package for {device} ({meta.get('AOTI_CPU_ISA') or meta.get('pfdeploy.gpu', '')}), "
          f"{info['bytes'] / 1e6:.1f} MB, {meta['pfdeploy.precision']}, batch {meta['pfdeploy.batch']}, "
          f"{meta['pfdeploy.fused_layers']} fused PF layers, weights {meta['pfdeploy.checkpoint_sha256'][:12]}")
    return 0


def add_verify(sub) -> None:
    p = sub.add_parser("verify", help="compare an artifact (ONNX, .pt2) with its PyTorch model; PASS/FAIL")
    p.add_argument("artifact", help="ONNX file (fp32, fp16 or int8) or .pt2 package written by pfdeploy")
    p.add_argument("--checkpoint", metavar="PATH", help="the checkpoint the artifact was exported from")
    p.add_argument("--samples", type=int, default=8, help="images per input source (default 8)")
    p.add_argument("--data", metavar="DIR", help="also compare on real images from this folder")
    p.add_argument("--batch", type=int, default=4, help="batch size for dynamic-batch graphs (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="write the report as JSON")
    p.add_argument("--backend", choices=["onnxruntime", "openvino", "torch", "pt2"],
                   help="runs the artifact (default: pt2 for a .pt2 package, else onnxruntime); torch: the torch "
                        "backend's session (BatchNorm folded) on the artifact's model")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"],
                   help="compute precision of openvino (fp32/bf16) or torch (fp32/fp16), judged with its tolerances")
    p.add_argument("--device", choices=["cpu", "cuda"], help="torch and pt2: where the session runs")


def _check_json_output(path, inputs, what: str = "--json") -> None:
    """--json/--plot outputs: checked before the work, and never one of the command's inputs."""
    from pfdeploy._io import check_output_file, refuse_overwrite

    if path:
        check_output_file(path, what)
        refuse_overwrite(path, inputs, what)


def run_verify(args) -> int:
    from pfdeploy._io import write_json_atomic
    from pfdeploy.runtime.verify import verify_artifact

    _check_json_output(args.json, [args.artifact, args.checkpoint])
    report = verify_artifact(args.artifact, checkpoint=args.checkpoint, samples=args.samples,
                             data=args.data, batch=args.batch, seed=args.seed, backend=args.backend,
                             precision=args.precision, device=args.device)
    print(report.format())
    if args.json:
        write_json_atomic(args.json, report.to_dict())
    if report.nonfinite:
        print(f"pfdeploy: error: verification FAILED: {report.nonfinite}", file=sys.stderr)
    return 0 if report.passed else 1


# --- quantize (calibration / INT8) --------------------------------------------------------------


def add_quantize(sub) -> None:
    p = sub.add_parser("quantize", help="calibrate an FP32 ONNX graph on images and write an INT8 Q/DQ graph")
    p.add_argument("onnx", help="FP32 ONNX file from `pfdeploy export`")
    p.add_argument("--calib-data", required=True, metavar="SRC",
                   help="class folder (DIR/<class>/*.jpg), flat folder of images, or .npy/.npz array")
    p.add_argument("--num-images", type=int, default=512, help="calibration images (default 512)")
    p.add_argument("--method", choices=("entropy", "percentile", "minmax"), default="entropy")
    p.add_argument("--output", metavar="PATH", help="default: <name>.int8.onnx (or .int8-cpu.onnx) beside the input")
    p.add_argument("--exclude", nargs="+", default=[], metavar="NODE", help="node names to keep in float")
    p.add_argument("--target", choices=("tensorrt", "cpu"), default="tensorrt",
                   help="tensorrt: symmetric INT8 for TensorRT (default); cpu: the same quantization "
                        "re-encoded for ONNX Runtime's x86 kernels (u8 activations, ReLU folded)")
    p.add_argument("--quantizer", choices=("ort", "modelopt"), default="ort",
                   help="onnxruntime.quantization (default) or NVIDIA ModelOpt's ONNX quantizer when installed")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling --num-images (default 0)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="calibration cache (default $PFDEPLOY_CACHE or ~/.cache/pfdeploy)")
    p.add_argument("--no-equalize", action="store_true",
                   help="skip cross-layer equalization (per-channel scales moved through ReLU, pools and "
                        "LayerNorm before calibration; weights only, the same ops)")
    p.add_argument("--bias-correction", choices=("auto", "on", "off"), default="auto",
                   help="fold each layer's mean INT8 error into its float bias (auto: on for ResNets, off for "
                        "transformers, as measured)")
    p.add_argument("--val-data", metavar="DIR",
                   help="images that judge the INT8 graph for --max-drop and --analyze (class folders: top-1; "
                        "otherwise top-1 agreement with FP32); default for --analyze: the calibration images")
    p.add_argument("--max-drop", type=float, metavar="POINTS",
                   help="accuracy budget: keep the most sensitive tensors in float until INT8 top-1 is within "
                        "POINTS of FP32 on --val-data")
    p.add_argument("--analyze", action="store_true",
                   help="sensitivity analysis: SQNR of every quantized tensor, what keeping the worst in float "
                        "buys; table, <output>.sensitivity.json and a bar plot (.png, with matplotlib)")


def _print_int8_extras(out, analyzed: bool) -> None:
    """The budget line and, after --analyze, the ranked sensitivity table and where its files are."""
    import onnx

    from pfdeploy.calibration.budget import BudgetResult, budget_summary
    from pfdeploy.calibration.quantize import sensitivity_paths
    from pfdeploy.calibration.sensitivity import TABLE_COLUMNS, summary_line, table_rows
    from pfdeploy.limits import read_json_file

    meta = {p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props}
    if "pfdeploy.int8_budget" in meta:
        print(budget_summary(BudgetResult.from_json(meta["pfdeploy.int8_budget"])))
    if analyzed:
        json_path, png_path = sensitivity_paths(out)
        report = read_json_file(json_path, "sensitivity analysis", "run `pfdeploy quantize --analyze` again")
        print(summary_line(report))
        print(text_table(table_rows(report), TABLE_COLUMNS))
        print(f"sensitivity analysis: {json_path}" + (f", plot {png_path}" if png_path.exists() else ""))


def run_quantize(args) -> int:
    import onnx

    from pfdeploy.calibration import int8_from_onnx
    from pfdeploy.calibration.qdq import ort_kernel_report, placement_report

    if args.val_data is not None and args.max_drop is None and not args.analyze:
        raise PfdeployError("--val-data is read only by --max-drop and --analyze; add one of them, or leave it out")
    out = int8_from_onnx(args.onnx, args.calib_data, args.output, num_images=args.num_images, method=args.method,
                         exclude=args.exclude, seed=args.seed, cache_dir=args.cache_dir, target=args.target,
                         quantizer=args.quantizer, equalize=not args.no_equalize,
                         bias_correction={"auto": None, "on": True, "off": False}[args.bias_correction],
                         val_data=args.val_data, max_drop=args.max_drop, analyze="yes" if args.analyze else "no")
    placement, kernels = placement_report(onnx.load(str(out), load_external_data=False)), ort_kernel_report(str(out))
    rows = [{"op": op, "in graph": "int8", "count": n, "why": ""} for op, n in sorted(placement["int8"].items())]
    rows += [{"op": op, "in graph": "float", "count": n, "why": placement["reasons"].get(op, "")}
             for op, n in sorted(placement["float"].items())]
    print(text_table(rows, ["op", "in graph", "count", "why"]))
    fmt = lambda counts: ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "-"  # noqa: E731
    print(f"ONNX Runtime CPU kernels, int8: {fmt(kernels['int8'])}")
    print(f"ONNX Runtime CPU kernels, float: {fmt(kernels['float'])}")
    _print_int8_extras(out, args.analyze)
    print(f"wrote {out}")
    return 0


# --- build-engine --------------------------------------------------------------------------------


def add_build_engine(sub) -> None:
    p = sub.add_parser(
        "build-engine", help="compile a strongly typed ONNX (FP32/FP16/INT8 Q/DQ) into a TensorRT engine"
    )
    p.add_argument("onnx", metavar="ONNX", help="ONNX file made by `pfdeploy export` / `pfdeploy quantize`")
    p.add_argument("--output", "-o", metavar="PLAN", help="engine path (default: ONNX with .plan)")
    p.add_argument("--batch", metavar="MIN,OPT,MAX", help="batch range of the profile (default 1,8,32 for a "
                   "dynamic batch, the fixed batch otherwise)")
    p.add_argument("--workspace", type=float, metavar="GiB", help="workspace memory pool limit in GiB")
    p.add_argument("--opt-level", type=int, default=3, choices=range(0, 6), metavar="0-5",
                   help="TensorRT builder optimization level (default 3)")
    p.add_argument("--timing-cache", metavar="PATH", help="timing cache file: read, then updated")
    p.add_argument("--hardware-compat", default="none", choices=["none", "ampere+", "same-cc"],
                   help="ampere+: any Ampere or newer GPU; same-cc: GPUs of this compute capability")
    p.add_argument("--version-compatible", action="store_true", help="engine also loads on newer TensorRT")
    p.add_argument("--inspect", action="store_true", help="save the engine's layer info as PLAN.layers.json")
    p.add_argument("--tf32", action="store_true", help="let FP32 layers use TF32 (off by default: FP32 stays "
                   "FP32, within the fp32 verification tolerance)")
    p.add_argument("--force", action="store_true", help="rebuild even if an identical engine exists, or over "
                   "an unreadable manifest")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_build_engine(args) -> int:
    from pfdeploy.engines import engine_from_onnx
    from pfdeploy.engines.profile import parse_batch_range

    batch = parse_batch_range(args.batch) if args.batch else None
    result = engine_from_onnx(
        args.onnx, args.output, batch=batch, workspace_gib=args.workspace, opt_level=args.opt_level,
        timing_cache=args.timing_cache, hardware_compat=args.hardware_compat,
        version_compatible=args.version_compatible, inspect=args.inspect, tf32=args.tf32, force=args.force,
        progress=not args.no_progress,
    )
    m = result.manifest
    if result.reused:
        print(f"reused {result.path}: same ONNX, options, GPU and TensorRT (pass --force to rebuild)")
    else:
        print(f"built {result.path} ({m['plan']['bytes'] / 1e6:.1f} MB, {m['precision']}, batch "
              f"{m['batch']['min']}-{m['batch']['max']}) in {m['build_seconds']:.1f} s on "
              f"{m['environment']['gpu_name']} with TensorRT {m['environment']['tensorrt_version']}")
    print(f"manifest {result.manifest_path}")
    if m.get("layer_info"):
        print(f"layer info {result.path.parent / m['layer_info']}")
    return 0


# --- check-trt -----------------------------------------------------------------------------------


def add_check_trt(sub) -> None:
    from pfdeploy.engines.trt_matrix import DEFAULT_TRT_VERSION, available_versions

    p = sub.add_parser("check-trt", help="check ONNX graphs against TensorRT's documented ONNX operator support "
                       "(no TensorRT needed); exit 1 on any violation")
    p.add_argument("files", nargs="+", metavar="FILE", help="ONNX files")
    p.add_argument("--trt-version", metavar="VERSION",
                   help=f"operator table: a shipped TensorRT version ({', '.join(available_versions())}) or a "
                        f"table's JSON file (default {DEFAULT_TRT_VERSION})")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def run_check_trt(args) -> int:
    from pfdeploy.engines.trt_check import check_trt
    from pfdeploy.engines.trt_matrix import load_matrix

    matrix = load_matrix(args.trt_version)
    reports = [check_trt(path, matrix) for path in args.files]
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        print("\n".join(r.format() for r in reports))
        print(f"table: {matrix.source}")
    return 0 if all(r.passed for r in reports) else 1


# --- bench / predict / eval ----------------------------------------------------------------------


def _runtime_args(p) -> None:
    p.add_argument("--backend", default="auto",
                   choices=["auto", "torch", "onnxruntime", "openvino", "tensorrt", "pt2"],
                   help="backend (default auto: .onnx -> onnxruntime, or openvino for INT8 graphs where it is "
                        "faster and for --precision bf16; .plan -> tensorrt; .pt2 -> pt2; model name -> torch)")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"],
                   help="compute precision: torch fp32/fp16, openvino fp32/bf16 (bf16 needs AVX512-BF16 or "
                        "AMX); onnxruntime and tensorrt run the artifact's own")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"],
                   help="default: cuda for TensorRT engines, else cpu")
    p.add_argument("--checkpoint", metavar="PTH", help="weights for a model name (torch backend)")
    p.add_argument("--preprocess", metavar="JSON", help="override the recorded preprocessing: a JSON "
                   "object or file with size, crop_pct, interpolation, mean, std")


def _runtime_options(args) -> dict:
    options = {"checkpoint": args.checkpoint} if args.checkpoint else {}
    if getattr(args, "precision", None):
        options["precision"] = args.precision
    if getattr(args, "preprocess", None):
        from pfdeploy.calibration.preprocess import preprocess_from_option

        options["preprocess"] = preprocess_from_option(args.preprocess)  # JSON or a file, within the JSON limits
    return options


def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="throughput and latency of artifacts side by side (interleaved)")
    p.add_argument("targets", nargs="+", metavar="TARGET", help=".onnx/.plan files or model names")
    _runtime_args(p)
    p.add_argument("--batch", default="1,8,32", help="comma-separated batch sizes (default 1,8,32)")
    p.add_argument("--seconds", type=float, default=2.0, help="measuring time per target and batch")
    p.add_argument("--warmup", type=int, default=3, help="warm-up calls per target and batch")
    p.add_argument("--json", metavar="PATH", help="write the report (schema pfdeploy.bench/1) here")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of img/s vs batch (needs matplotlib)")
    p.add_argument("--channels-last", action="store_true", help="torch backend: channels-last memory format")
    p.add_argument("--cuda-graph", action="store_true", help="torch/tensorrt/pt2 on CUDA: replay CUDA graphs")
    p.add_argument("--compile", nargs="?", const=True, metavar="MODE",
                   choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                   help="torch backend: torch.compile (Inductor); without MODE: max-autotune on CUDA, default on CPU")
    p.add_argument("--fused", action="store_true", help="torch backend on CUDA: PF layers through pfdeploy's "
                   "fused Triton kernel (pfdeploy[kernels])")


def run_bench(args) -> int:
    from pfdeploy._io import write_json_atomic
    from pfdeploy.runtime.bench import benchmark, check_batches, format_table, plot_throughput

    batches = check_batches(args.batch, "--batch")
    _check_json_output(args.json, args.targets)
    _check_json_output(args.plot, [*args.targets, args.json], "--plot")
    options = _runtime_options(args)
    if args.channels_last:
        options["channels_last"] = True
    if args.cuda_graph:
        options["cuda_graph"] = True
    if args.compile:
        options["compile"] = args.compile
    if args.fused:
        options["fused"] = True
    report = benchmark(args.targets, batches, args.seconds, args.warmup,
                       backend=args.backend, device=args.device, **options)
    print(format_table(report))
    if args.json:
        print(f"wrote {write_json_atomic(args.json, report)}")
    if args.plot:
        print(f"wrote {plot_throughput(report, args.plot)}")
    return 0


def add_predict(sub) -> None:
    p = sub.add_parser("predict", help="top-k classes of image files")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", required=True, metavar="ARTIFACT", help=".onnx/.plan file or model name")
    _runtime_args(p)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--labels", metavar="FILE", help="class names, one per line")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def run_predict(args) -> int:
    from pfdeploy.runtime.predict import predict

    results = predict(args.images, args.model, top_k_count=args.top_k, labels=args.labels,
                      backend=args.backend, device=args.device, **_runtime_options(args))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for result in results:
        best = ", ".join(f"{t['label']} {100 * t['probability']:.1f}%" for t in result["top"])
        print(f"{result['image']}: {best}")
    return 0


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="top-1/top-5 accuracy on an ImageNet-style folder DIR/<class>/*")
    p.add_argument("artifact", metavar="ARTIFACT", help=".onnx/.plan file or model name")
    p.add_argument("--data", required=True, metavar="DIR")
    _runtime_args(p)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--limit", type=int, help="evaluate N images drawn with a fixed seed (default: all)")
    p.add_argument("--labels", metavar="FILE", help="the model's class names, one per line in index order: class "
                   "folders are matched to them by name (without it, folders must be named by class index)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def run_eval(args) -> int:
    from pfdeploy.runtime.predict import evaluate

    report = evaluate(args.artifact, args.data, batch=args.batch, limit=args.limit, backend=args.backend,
                      device=args.device, labels=args.labels, **_runtime_options(args))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{args.artifact}: top-1 {report['top1']:.2f}%  top-5 {report['top5']:.2f}%  "
              f"({report['images']} images, {report['classes']} classes, {report['backend']} "
              f"{report['device']} {report['precision']})")
    return 0


# --- deploy --------------------------------------------------------------------------------------


def add_deploy(sub) -> None:
    p = sub.add_parser("deploy", help="export, verify, convert, quantize, build engines, benchmark: "
                       "artifacts plus report.json / report.md")
    p.add_argument("name", nargs="?", help="registered model name (or use --fixture)")
    p.add_argument("--fixture", metavar="NAME",
                   help="a trained fixture of tests/fixtures/trained/fixtures.json (its model, classes, "
                   "overrides, checkpoint, preprocessing, calibration and val images)")
    p.add_argument("--checkpoint", metavar="PATH",
                   help="weights (.pth); without it: random weights, labelled so")
    p.add_argument("--num-classes", type=int, help="classifier size of the checkpoint (default: registry's)")
    p.add_argument("--override", action="append", metavar="KEY=VALUE",
                   help="create_model override, JSON value (e.g. layers=[1,1,1,1]); repeatable")
    p.add_argument("--precision", help="comma-separated subset of fp32,fp16,int8 "
                   "(default fp32,fp16, plus int8 when --calib-data is given)")
    p.add_argument("--calib-data", metavar="DIR", help="calibration images for INT8")
    p.add_argument("--calib-images", type=int, help="calibration images to use (default 512)")
    p.add_argument("--calib-method", choices=["entropy", "percentile", "minmax"], help="default entropy")
    p.add_argument("--input-format", choices=["float-nchw", "uint8-nhwc"],
                   help="graph input: normalized float NCHW (default) or raw uint8 NHWC pixels")
    p.add_argument("--int8-target", choices=["tensorrt", "cpu"],
                   help="INT8 graph for TensorRT (default; symmetric Q/DQ) or for ONNX Runtime CPU kernels")
    p.add_argument("--int8-max-drop", type=float, metavar="POINTS",
                   help="INT8 accuracy budget: keep the most sensitive tensors in float until INT8 top-1 on "
                        "--val-data is within POINTS of FP32 (needs --val-data)")
    p.add_argument("--val-data", metavar="DIR", help="images for verification against PyTorch (optional)")
    p.add_argument("--labels", metavar="FILE",
                   help="the model's class names, one per line in index order: --val-data class folders named "
                        "by them are mapped to outputs by name (without it folders must be named 0, 1, ...)")
    p.add_argument("--verify-samples", type=int, help="images per verification source (default 8)")
    p.add_argument("--out", metavar="DIR", help="output folder (default deploy-out/<name>)")
    p.add_argument("--openvino", choices=["auto", "yes", "no"], default="auto",
                   help="OpenVINO variants (the INT8 graph; the FP32 graph in BF16 where the CPU has "
                        "AVX512-BF16/AMX): auto = when OpenVINO is installed (default)")
    p.add_argument("--engines", choices=["auto", "yes", "no"], default="auto",
                   help="TensorRT engines: auto = when TensorRT and a GPU are present (default)")
    p.add_argument("--pt2", choices=["auto", "yes", "no"], default="auto",
                   help="AOTInductor .pt2 packages (fp32/fp16), verified and benchmarked: auto = on a CUDA GPU "
                        "only (default); yes = also on the CPU (fp32; compiling takes minutes for full-size models)")
    p.add_argument("--engine-batch", default="1,8,32", help="engine profile MIN,OPT,MAX (default 1,8,32)")
    p.add_argument("--bench-batch", default="1,8", help="benchmark batch sizes (default 1,8)")
    p.add_argument("--bench-seconds", type=float, default=1.0,
                   help="seconds per artifact and batch (default 1)")
    p.add_argument("--force", action="store_true",
                   help="redo every step even when its inputs are unchanged; also lets --out be a folder that "
                        "holds files but is not a deploy output (its report.md, bench.json, ... are replaced)")
    p.add_argument("--json", action="store_true", help="print report.json instead of the tables")


def _deploy_options(args):
    from pathlib import Path

    from pfdeploy.deploy import DeployOptions, options_for_fixture, parse_overrides
    from pfdeploy.engines.profile import parse_batch_range

    if bool(args.name) == bool(args.fixture):
        raise PfdeployError("deploy needs a model NAME or --fixture NAME (not both); see `pfdeploy list`")
    common = {
        "precisions": args.precision, "engines": args.engines, "openvino": args.openvino, "force": args.force,
        "pt2": args.pt2,
        "engine_batch": parse_batch_range(args.engine_batch, "--engine-batch"), "bench_batches": args.bench_batch,
        "bench_seconds": args.bench_seconds,
    }
    optional = {"calib_images": args.calib_images, "calib_method": args.calib_method,
                "int8_target": args.int8_target, "input_format": args.input_format,
                "verify_samples": args.verify_samples, "int8_max_drop": args.int8_max_drop}
    common.update({k: v for k, v in optional.items() if v is not None})
    if args.labels is not None:
        from pfdeploy.runtime.predict import read_label_names

        common["class_names"] = tuple(read_label_names(args.labels))
    paths = {"calib_data": args.calib_data, "val_data": args.val_data, "checkpoint": args.checkpoint}
    paths = {k: Path(v) for k, v in paths.items() if v is not None}
    stem = args.fixture or args.name
    out = Path(args.out or Path("deploy-out") / stem)
    if args.fixture:
        if args.override or args.num_classes is not None:
            raise PfdeployError("--fixture sets the classes and overrides; drop --num-classes/--override")
        return options_for_fixture(args.fixture, out, **paths, **common)
    overrides = parse_overrides(args.override)
    return DeployOptions(args.name, out, num_classes=args.num_classes, overrides=overrides, **paths, **common)


def run_deploy(args) -> int:
    from pfdeploy.deploy import deploy, tables_from_report
    from pfdeploy.deploy.pipeline import trt_check_failures, verification_failures

    report = deploy(_deploy_options(args))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(tables_from_report(report))
        out = report["options"]["out"]
        print(f"report: {out}/report.md, {out}/report.json")
    failed = verification_failures(report)  # the exit code is the same with --json
    if failed:
        print(f"pfdeploy: verification FAILED for {'; '.join(failed)} (see report.md)", file=sys.stderr)
    incompatible = trt_check_failures(report)
    if incompatible:
        print(f"pfdeploy: TensorRT check FAILED for {'; '.join(incompatible)} (see report.md)", file=sys.stderr)
    return 1 if failed or incompatible else 0


# --- triton --------------------------------------------------------------------------------------


def add_triton(sub) -> None:
    p = sub.add_parser("triton", help="write a Triton Inference Server model repository from artifacts")
    p.add_argument("artifacts", nargs="+", metavar="ARTIFACT", help=".onnx files and/or .plan engines")
    p.add_argument("--repo", required=True, metavar="DIR", help="model repository folder (created)")
    p.add_argument("--max-batch", type=int, help="max_batch_size (default: engine profile max, 32 for ONNX)")
    p.add_argument("--instances", type=int, default=1, help="model instances per device (default 1)")
    p.add_argument("--dynamic-batching", action="store_true", help="enable Triton's dynamic batcher")
    p.add_argument("--preferred-batch", help="comma-separated preferred batch sizes for the batcher")
    p.add_argument("--queue-delay-us", type=int, default=100, help="batcher max queue delay (default 100)")
    p.add_argument("--device", choices=["auto", "gpu", "cpu"], default="auto", help="instance kind")
    p.add_argument("--no-cuda-graphs", action="store_true", help="engines: no CUDA-graph optimization")
    p.add_argument("--name", action="append", help="model name per artifact (default: from the file name)")
    p.add_argument("--backend", action="append", choices=["onnxruntime", "openvino"],
                   help="how Triton serves .onnx files: onnxruntime (default) or openvino (CPU instances, "
                        "model names get _openvino); once for all, or once per artifact")


def run_triton(args) -> int:
    from pfdeploy.triton import TritonOptions, repository_from_artifacts

    preferred = positive_ints(args.preferred_batch, "--preferred-batch", "8,32") if args.preferred_batch else None
    options = TritonOptions(
        max_batch=args.max_batch,
        instances=args.instances,
        dynamic_batching=args.dynamic_batching,
        preferred_batch=preferred,
        queue_delay_us=args.queue_delay_us,
        device=args.device,
        cuda_graphs=not args.no_cuda_graphs,
    )
    models = repository_from_artifacts(args.artifacts, args.repo, options, args.name, args.backend)
    rows = [
        {"model": m.name, "platform": m.platform, "max batch": m.config["max_batch_size"],
         "config": m.config_path}
        for m in models
    ]
    print(text_table(rows, ["model", "platform", "max batch", "config"]))
    print(f"serve with: tritonserver --model-repository {args.repo}")
    return 0


# --- registry of subcommands (one line per command) --------------------------------------------

COMMANDS: list[tuple[str, Callable, Callable]] = [
    ("list", add_list, run_list),
    ("info", add_info, run_info),
    ("export", add_export, run_export),
    ("verify", add_verify, run_verify),
    ("quantize", add_quantize, run_quantize),
    ("check-trt", add_check_trt, run_check_trt),
    ("build-engine", add_build_engine, run_build_engine),
    ("bench", add_bench, run_bench),
    ("predict", add_predict, run_predict),
    ("eval", add_eval, run_eval),
    ("deploy", add_deploy, run_deploy),
    ("triton", add_triton, run_triton),
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand of COMMANDS."""
    parser = argparse.ArgumentParser(
        prog="pfdeploy", description="Deploy parameter-free-layer networks to verified ONNX/TensorRT."
    )
    parser.add_argument("--version", action="version", version=f"pfdeploy {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for _name, add, run in COMMANDS:
        add(sub)
        sub.choices[_name].set_defaults(run=run)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every `finally` runs and temporary files are removed."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Handle SIGTERM like Ctrl-C while a command runs (main thread only), then restore the handler."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _print_any_file_name() -> None:
    """File names that are not valid UTF-8 reach Python as lone surrogates: print their original bytes
    instead of failing with UnicodeEncodeError under a strict UTF-8 locale."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            with contextlib.suppress(ValueError, OSError):
                stream.reconfigure(errors="surrogateescape")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `pfdeploy` console script; returns the exit code.

    A PfdeployError, or an OSError the user can fix (disk full, read-only file system, permissions),
    prints one line; Ctrl-C exits 130 and SIGTERM 143, with temporary files removed.
    """
    from pfdeploy._io import filesystem_message, is_filesystem_error, remove_stale_temp_dirs

    _print_any_file_name()
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="pfdeploy: %(message)s",
        stream=sys.stderr,
    )
    try:
        with _sigterm_as_interrupt():
            remove_stale_temp_dirs()  # scratch folders of killed runs
            return args.run(args)
    except PfdeployError as exc:
        print(f"pfdeploy: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if not is_filesystem_error(exc):
            raise
        print(f"pfdeploy: error: {filesystem_message(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(f"pfdeploy: {'terminated (SIGTERM)' if terminated else 'interrupted'}; no partial artifact "
              "was written and temporary files were removed", file=sys.stderr)
        return 143 if terminated else 130


if __name__ == "__main__":
    sys.exit(main())
