"""`make bench`: every CPU benchmark section in one run, printed as markdown.

Each section is a module `benchmarks/bench_<name>.py` exposing `run(args) -> str`. Sections run
one after the other; within a section every workload is interleaved round by round (see
pfdeploy.runtime.timing), so the ratios it reports are measured side by side.

    python benchmarks/run.py                      # all sections
    python benchmarks/run.py --only fp32,int8     # some sections
    python benchmarks/run.py --output bench.md    # also write the markdown to a file
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SECTIONS = ("fp32", "int8", "runtime", "openvino", "int8_outliers")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--output", type=Path, help="also write the markdown report here")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per workload (section default if unset)")
    args, _unknown = parser.parse_known_args(argv)
    return args


def machine_line() -> str:
    """One line naming the machine the numbers were measured on."""
    import os

    import onnxruntime
    import torch

    from pfdeploy._cpu import cpu_summary

    return (
        f"{cpu_summary()}, {os.cpu_count()} cores; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"Python {platform.python_version()}"
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(HERE))
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        print(f"bench: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    parts = [f"# pfdeploy benchmarks\n\nMachine: {machine_line()}\n"]
    for name in chosen:
        start = time.perf_counter()
        print(f"== section {name} ==", file=sys.stderr, flush=True)
        module = importlib.import_module(f"bench_{name}")
        parts.append(module.run(args))
        print(f"== section {name} done in {time.perf_counter() - start:.0f} s ==", file=sys.stderr, flush=True)
    report = "\n".join(parts)
    print(report)
    if args.output:
        args.output.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
