"""Killed runs: SIGTERM is handled like Ctrl-C (exit 143, one line, temporaries removed), and what a
SIGKILLed run leaves behind is removed by the next run, wherever pfdeploy writes: the output folder,
the calibration cache and $TMPDIR.

The runs are real `pfdeploy` processes, stopped at a controlled moment: a wrapper makes the atomic
rename of one chosen file wait (the temporary file and every scratch folder exist then) and says so
through a marker file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_graphs import calibration_array, conv_classifier, pfdeploy_metadata

# Runs pfdeploy's main(); when os.replace targets a path containing $PFTEST_HOLD, touch $PFTEST_MARK and wait.
WRAPPER = """
import os, sys, time
real_replace = os.replace
def holding_replace(src, dst, *args, **kwargs):
    if os.environ["PFTEST_HOLD"] and os.environ["PFTEST_HOLD"] in str(dst):
        open(os.environ["PFTEST_MARK"], "w").close()
        time.sleep(120)
    return real_replace(src, dst, *args, **kwargs)
os.replace = holding_replace
from pfdeploy.cli import main
sys.exit(main(sys.argv[1:]))
"""


def pfdeploy(args: list[str], tmp: Path, hold: str | None = None, stop: signal.Signals | None = None):
    """Run `pfdeploy args` with TMPDIR=tmp; with `hold`, stop it by `stop` once the rename of a file
    ending in `hold` is reached. Returns the CompletedProcess-like (returncode, stderr)."""
    env = {**os.environ, "TMPDIR": str(tmp), "PFTEST_HOLD": hold or "", "PFTEST_MARK": str(tmp.parent / "mark")}
    mark = Path(env["PFTEST_MARK"])
    mark.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", WRAPPER, *args], env=env, stderr=subprocess.PIPE, text=True)
    if hold is not None:
        deadline = time.monotonic() + 120
        while not mark.exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the run never reached the write"
            time.sleep(0.05)
        proc.send_signal(stop)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def temporaries(*folders: Path) -> list[str]:
    """Every temporary file or scratch folder pfdeploy (or the onnxruntime quantizer it calls) might leave."""
    found = []
    for folder in folders:
        for path in folder.rglob("*"):
            name = path.name
            if name.endswith(".tmp") or name.startswith(("pfdeploy-", "pre.quant.", "ort.quant.", ".calibcache_")):
                found.append(str(path.relative_to(folder)))
    return sorted(found)


@pytest.fixture
def dirs(tmp_path):
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    return tmp_path, tmp


def test_sigterm_is_handled_like_ctrl_c(dirs):
    root, tmp = dirs
    model = conv_classifier(root / "m.onnx", pfdeploy_metadata())
    repo = root / "repo"
    code, err = pfdeploy(["triton", str(model), "--repo", str(repo)], tmp, hold="model.onnx", stop=signal.SIGTERM)
    assert code == 143, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("pfdeploy: terminated (SIGTERM)") and "Traceback" not in err
    assert temporaries(repo, tmp) == []
    assert not (repo / "m" / "1" / "model.onnx").exists()


def test_a_sigkilled_write_is_cleaned_by_the_next_run(dirs):
    root, tmp = dirs
    model = conv_classifier(root / "m.onnx", pfdeploy_metadata())
    repo = root / "repo"
    args = ["triton", str(model), "--repo", str(repo)]
    code, _ = pfdeploy(args, tmp, hold="model.onnx", stop=signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert len(temporaries(repo)) == 1  # the killed run's partial copy, beside the target
    code, err = pfdeploy(args, tmp)
    assert code == 0, err
    assert temporaries(repo, tmp) == []
    assert (repo / "m" / "1" / "model.onnx").read_bytes() == model.read_bytes()


@pytest.mark.slow  # three quantize processes (about 13 s); the triton tests above cover kills in `make test`
def test_quantize_after_sigterm_and_sigkill_leaves_no_temporary(dirs):
    """Stopped while writing the calibration cache, when the scratch folders under $TMPDIR (pre.onnx,
    the augmented model, onnxruntime's own folders) and the cache's temporary exist: SIGTERM removes
    them at once; after a SIGKILL the next run does."""
    root, tmp = dirs
    model = conv_classifier(root / "m.onnx", pfdeploy_metadata())
    calib = calibration_array(root / "calib.npy")
    cache = root / "cache"
    args = ["quantize", str(model), "--calib-data", str(calib), "--num-images", "16", "--cache-dir", str(cache),
            "--output", str(root / "m.int8.onnx")]
    code, err = pfdeploy(args, tmp, hold="/calibration/", stop=signal.SIGTERM)
    assert code == 143, err
    assert temporaries(root) == []
    code, _ = pfdeploy(args, tmp, hold="/calibration/", stop=signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert temporaries(tmp) and temporaries(cache)  # what the kill left
    code, err = pfdeploy(args, tmp)
    assert code == 0, err
    assert temporaries(root) == []  # cache and TMPDIR are inside root
    assert (root / "m.int8.onnx").is_file()
