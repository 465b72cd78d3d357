"""The deploy state file and data-folder fingerprints: odd file names and damaged state never crash a run."""

from __future__ import annotations

import json
import os

import pytest

from pfdeploy.deploy.state import STATE_FILE, StepState, fingerprint_dir


def test_fingerprint_of_a_folder_with_non_utf8_names(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "plain.png").write_bytes(b"x")
    odd = os.path.join(os.fsencode(tmp_path / "a"), b"caf\xe9-\xff.png")  # Latin-1 bytes: not UTF-8
    with open(odd, "wb") as f:
        f.write(b"y")
    first = fingerprint_dir(tmp_path)
    assert first == fingerprint_dir(tmp_path) and len(first) == 64
    with open(odd, "ab") as f:
        f.write(b"more")  # a changed file changes the fingerprint
    assert fingerprint_dir(tmp_path) != first


def test_fingerprint_of_utf8_names_is_unchanged_by_the_bytes_hashing(tmp_path):
    """Folders with ordinary names keep their fingerprint (earlier deploy states stay reusable)."""
    from pfdeploy._io import sha256_bytes

    (tmp_path / "é.png").write_bytes(b"x")
    stat = (tmp_path / "é.png").stat()
    assert fingerprint_dir(tmp_path) == sha256_bytes(f"é.png:{stat.st_size}:{stat.st_mtime_ns}".encode())


@pytest.mark.parametrize("content", [
    "[1, 2, 3]",
    '{"steps": [1, 2]}',
    '{"steps": {"export fp32": "done"}}',
    '{"steps": {"export fp32": {"key": "k", "outputs": ["a.onnx"]}}}',
    '"a string"',
    "{not json",
])
def test_state_of_the_wrong_shape_is_ignored_with_a_warning(tmp_path, caplog, content):
    (tmp_path / STATE_FILE).write_text(content)
    with caplog.at_level("WARNING"):
        state = StepState(tmp_path)
    assert state.steps == {} and "every step runs again" in caplog.text
    calls = []
    result = state.run("export fp32", {"a": 1}, [], lambda: calls.append(1) or {"ok": True})
    assert calls == [1] and result["reused"] is False
    assert json.loads((tmp_path / STATE_FILE).read_text())["steps"]["export fp32"]["result"] == {"ok": True}
    assert StepState(tmp_path).run("export fp32", {"a": 1}, [], lambda: calls.append(2) or {})["reused"]
    assert calls == [1]


def _state_with_one_step(tmp_path):
    state = StepState(tmp_path)
    out = tmp_path / "a.onnx"
    out.write_bytes(b"graph")
    result = {"sources": {"random": {"passed": True, "max_abs": 0.5}}, "images": 8}
    state.run("verify a.onnx", {"a": 1}, [out], lambda: result)
    return json.loads((tmp_path / STATE_FILE).read_text())


@pytest.mark.parametrize("edit", [
    lambda e: e["result"]["sources"]["random"].update(passed="yes"),  # a TypeError in pipeline.py today
    lambda e: e["result"].update(sources=[1, 2]),  # AttributeError
    lambda e: e["result"].update(sources={"random": 5}),
    lambda e: e.update(result=None),
    lambda e: e.update(seconds="fast"),
    lambda e: e.update(outputs={"a.onnx": 5}),
    lambda e: e.update(outputs={"../../etc/passwd": "0" * 64}),
])
def test_a_state_value_edited_by_hand_is_a_miss_and_the_step_runs_again(tmp_path, caplog, edit):
    data = _state_with_one_step(tmp_path)
    edit(data["steps"]["verify a.onnx"])
    (tmp_path / STATE_FILE).write_text(json.dumps(data))
    calls = []
    with caplog.at_level("WARNING"):
        step = StepState(tmp_path).run("verify a.onnx", {"a": 1}, [], lambda: calls.append(1) or {"fresh": True})
    assert calls == [1] and step["reused"] is False and step["result"] == {"fresh": True}


def test_an_unedited_state_is_reused(tmp_path):
    _state_with_one_step(tmp_path)
    step = StepState(tmp_path).run("verify a.onnx", {"a": 1}, [], lambda: pytest.fail("reran"))
    assert step["reused"] and step["result"]["sources"]["random"]["passed"] is True


def test_deep_or_huge_state_json_is_ignored_like_broken_json(tmp_path, caplog):
    (tmp_path / STATE_FILE).write_text('{"steps": ' + "[" * 100_000 + "]" * 100_000 + "}")  # RecursionError today
    with caplog.at_level("WARNING"):
        assert StepState(tmp_path).steps == {}
    assert "every step runs again" in caplog.text


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_a_fifo_state_file_is_ignored_not_opened(tmp_path, caplog):
    os.mkfifo(tmp_path / STATE_FILE)  # opening it would block until a writer comes
    with caplog.at_level("WARNING"):
        assert StepState(tmp_path).steps == {}
    assert "every step runs again" in caplog.text
