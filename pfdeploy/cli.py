"""The `pfdeploy` command line: parses arguments, calls the stage functions, prints.

Each subcommand is a pair: `add_<name>(subparsers)` declares its arguments and `run_<name>(args)`
does the work by calling the package's public functions. A PfdeployError becomes one line on
stderr and a non-zero exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Callable, Sequence

from pfdeploy import __version__
from pfdeploy.errors import PfdeployError


def _table(rows: list[dict], columns: Sequence[str]) -> str:
    """Left-aligned plain-text table of `rows` restricted to `columns`."""
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, cells)])


# --- list / info -------------------------------------------------------------------------------


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
    print(_table(shown, ["name", "paper", "params", "MACs", "PF layers", "input"]))
    return 0


def add_info(sub) -> None:
    p = sub.add_parser("info", help="show a model's config, or an ONNX file's metadata and node counts")
    p.add_argument("name", nargs="?", help="registered model name or alias")
    p.add_argument("--onnx", metavar="FILE", help="describe an ONNX file instead of a model")


def run_info(args) -> int:
    if args.onnx:
        from pfdeploy.export import describe_onnx

        print(json.dumps(describe_onnx(args.onnx), indent=2))
        return 0
    if not args.name:
        raise PfdeployError("info needs a model name (see `pfdeploy list`) or --onnx FILE")
    from pfdeploy.models import model_summary

    print(json.dumps(model_summary(args.name), indent=2))
    return 0


# --- registry of subcommands (one line per command) --------------------------------------------

COMMANDS: list[tuple[str, Callable, Callable]] = [
    ("list", add_list, run_list),
    ("info", add_info, run_info),
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `pfdeploy` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="pfdeploy: %(message)s",
        stream=sys.stderr,
    )
    try:
        return args.run(args)
    except PfdeployError as exc:
        print(f"pfdeploy: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("pfdeploy: interrupted; no partial artifact was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
