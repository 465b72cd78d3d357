"""The one AOTInductor package `make test` compiles (a C++ build of ~20-40 s), shared by every test that needs one."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from export_helpers import perturbed_checkpoint, tiny

PT2_MODEL = "r50_max"
PT2_CLASSES = 10


@dataclass(frozen=True)
class CompiledPackage:
    """A dynamic-batch FP32 CPU package of tiny r50_max, made by `pfdeploy export --format pt2`."""

    path: Path
    checkpoint: Path
    overrides: dict
    exit_code: int
    stdout: str


@pytest.fixture(scope="session")
def cpu_pt2(tmp_path_factory) -> CompiledPackage:
    from pfdeploy.cli import main

    root = tmp_path_factory.mktemp("pt2")
    overrides = tiny(PT2_MODEL)
    ckpt = perturbed_checkpoint(PT2_MODEL, root / "w.pth", {**overrides, "num_classes": PT2_CLASSES})
    path = root / "r50_max.pt2"
    args = ["export", PT2_MODEL, "--format", "pt2", "--checkpoint", str(ckpt), "--num-classes", str(PT2_CLASSES),
            "--output", str(path)] + [f"--override={k}={json.dumps(v)}" for k, v in overrides.items()]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(args)
    return CompiledPackage(path, ckpt, overrides, code, out.getvalue())
