"""The CLI's contract: tables, JSON, and one-line errors with a non-zero exit code."""

from __future__ import annotations

import json

from pfdeploy.cli import main
from pfdeploy.models import list_models


def test_list_prints_every_model(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in list_models():
        assert name in out
    assert "17.33M" in out and "2.59G" in out


def test_list_json(capsys):
    assert main(["list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"]: r["pf_layers"] for r in rows}["r50_hybrid"] == 16


def test_info_accepts_alias(capsys):
    assert main(["info", "resnet50_hybrid"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "r50_hybrid" and info["parameters"] == 17330600


def test_unknown_model_is_one_line_and_nonzero(capsys):
    assert main(["info", "r51"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown model 'r51'" in err and "Traceback" not in err
