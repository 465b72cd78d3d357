"""deploy: the whole pipeline in one call, checkpoint -> verified, benchmarked artifacts + report.

    from pfdeploy.deploy import DeployOptions, deploy
    report = deploy(DeployOptions("r50_hybrid", out=Path("out"), precisions=("fp32", "fp16")))

Writes `<out>/<stem>.<precision>.onnx` (and `.plan` engines when TensorRT and a GPU are present),
`report.json`, `report.md`, `bench.json` and `throughput.png` (with matplotlib).
"""

from pfdeploy.deploy.options import (
    PRECISIONS,
    DeployOptions,
    check_options,
    options_for_fixture,
    parse_overrides,
    parse_precisions,
)
from pfdeploy.deploy.pipeline import REPORT_FORMAT, deploy
from pfdeploy.deploy.report import markdown_from_report, tables_from_report

__all__ = [
    "PRECISIONS",
    "REPORT_FORMAT",
    "DeployOptions",
    "check_options",
    "deploy",
    "markdown_from_report",
    "options_for_fixture",
    "parse_overrides",
    "parse_precisions",
    "tables_from_report",
]
