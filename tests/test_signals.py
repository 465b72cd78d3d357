"""SIGINT/SIGTERM never land inside native inference code (pfdeploy._signals), and every test that signals
its own process does it in a subprocess, so the test run itself never depends on what a library left behind.

The OpenVINO cases run in a fresh interpreter: its worker threads start inside pfdeploy's first OpenVINO call,
so their signal masks show what pfdeploy set up, not what an earlier test did.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_graphs import conv_classifier

pytestmark = pytest.mark.skipif(not Path("/proc/thread-self/status").exists(), reason="reads Linux /proc signal masks")

SIGNAL_BITS = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1))  # as /proc/*/status SigBlk shows them

DEFERRED = """
import json, os, signal, sys
from pathlib import Path

from pfdeploy._signals import deferred_signals

def blocked(status):
    return int(next(l for l in status.splitlines() if l.startswith("SigBlk:")).split()[1], 16)

got = []
signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
with deferred_signals():
    os.kill(os.getpid(), signal.SIGTERM)
    inside = list(got)
after = list(got)
report = {"inside": inside, "after": after}
if sys.argv[1:]:
    from pfdeploy.runtime import load

    before = set(os.listdir("/proc/self/task"))
    with load(sys.argv[1], backend="openvino", intra_op_threads=2) as session:
        session(session.input_spec.example(2))
        masks = {}
        for tid in set(os.listdir("/proc/self/task")) - before:
            try:
                masks[tid] = blocked(Path(f"/proc/self/task/{tid}/status").read_text())
            except FileNotFoundError:  # a thread that ended meanwhile
                pass
        report.update(workers=masks, caller=blocked(Path("/proc/thread-self/status").read_text()))
print(json.dumps(report))
"""


def _run(*args: str) -> dict:
    run = subprocess.run([sys.executable, "-c", DEFERRED, *args], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_a_signal_inside_deferred_signals_is_delivered_when_the_block_ends():
    report = _run()
    assert report == {"inside": [], "after": [signal.SIGTERM]}


def test_openvino_worker_threads_never_take_sigint_or_sigterm(tmp_path):
    """OpenVINO's threads start inside the session's first calls and keep SIGINT/SIGTERM blocked; the calling
    thread gets its own mask back after every call (so Ctrl-C still works between calls)."""
    pytest.importorskip("openvino", reason="the openvino backend needs pip install 'pfdeploy[openvino]'")
    report = _run(str(conv_classifier(tmp_path / "m.onnx")))
    assert report["workers"], "OpenVINO started no thread: nothing was checked"
    assert all(mask & SIGNAL_BITS == SIGNAL_BITS for mask in report["workers"].values()), report
    assert report["caller"] & SIGNAL_BITS == 0


HOLD_INFERENCE = """
import os, signal, sys
# Ctrl-C as a terminal delivers it: a test run started in the background without job control inherits SIGINT
# ignored (POSIX shells do that for `cmd &`), and Python then installs no KeyboardInterrupt handler.
signal.signal(signal.SIGINT, signal.default_int_handler)
from pfdeploy.runtime import openvino_backend

real_run = openvino_backend.OpenVinoSession._run
def marking_run(self, array):
    open(os.environ["PFTEST_MARK"], "a").close()  # the benchmark is inferring now
    return real_run(self, array)
openvino_backend.OpenVinoSession._run = marking_run
from pfdeploy.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _stopped_while_inferring(args: list[str], mark: Path, stop: signal.Signals) -> tuple[int, str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD_INFERENCE, *args], env={**os.environ, "PFTEST_MARK": str(mark)},
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not mark.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the benchmark never ran"
        time.sleep(0.05)
    time.sleep(0.3)  # well inside the timed rounds
    proc.send_signal(stop)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.parametrize("stop, code, word", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                              (signal.SIGINT, 130, "interrupted")])
def test_stopping_an_openvino_benchmark_exits_cleanly(tmp_path, stop, code, word):
    """A user's SIGTERM or Ctrl-C while OpenVINO infers: the documented exit code and one line, no crash."""
    pytest.importorskip("openvino", reason="the openvino backend needs pip install 'pfdeploy[openvino]'")
    model = conv_classifier(tmp_path / "m.onnx")
    returncode, err = _stopped_while_inferring(
        ["bench", str(model), "--backend", "openvino", "--batch", "2", "--seconds", "60", "--warmup", "1"],
        tmp_path / "mark", stop)
    lines = err.strip().splitlines()
    assert returncode == code, err
    assert lines[-1].startswith(f"pfdeploy: {word}") and "Traceback" not in err


CLOSED_FIRST_OPENED_FIRST = """
import ctypes, os, signal, sys
from pfdeploy.runtime import load

class Stack(ctypes.Structure):
    _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]

def signal_stack_is_usable():
    stack = Stack()
    ctypes.CDLL(None).sigaltstack(None, ctypes.byref(stack))
    if stack.flags & 2 or not stack.sp:  # SS_DISABLE: the thread's own stack is used
        return True
    for line in open("/proc/self/maps"):
        low, high = (int(part, 16) for part in line.split()[0].split("-"))
        if low <= stack.sp and stack.sp + stack.size <= high:
            return True
    return False

first = load(sys.argv[1], backend="openvino")
second = load(sys.argv[1], backend="openvino")
for session in (first, second):
    session(session.input_spec.example(2))
first.close(); del first
second.close(); del second
usable = signal_stack_is_usable()
got = []
signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
os.kill(os.getpid(), signal.SIGTERM)  # CPython handles it on the alternate signal stack (SA_ONSTACK)
print(usable, got == [signal.SIGTERM])
"""


def test_openvino_sessions_closed_in_opening_order_leave_a_usable_signal_stack(tmp_path):
    """The crash of issue 16: OpenVINO's CPU plugin gives the thread making an ov.Core a signal stack and
    unmaps it with that Core, restoring the previous one only if its own is current. With a Core per session,
    closing the first-opened session first left the thread on an unmapped signal stack and the next SIGTERM
    or Ctrl-C killed the process with SIGSEGV (exit -11), on every CPU. pfdeploy keeps one Core per process."""
    pytest.importorskip("openvino", reason="the openvino backend needs pip install 'pfdeploy[openvino]'")
    run = subprocess.run([sys.executable, "-c", CLOSED_FIRST_OPENED_FIRST, str(conv_classifier(tmp_path / "m.onnx"))],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"exit {run.returncode}: {run.stderr[-2000:]}"
    assert run.stdout.split() == ["True", "True"]

