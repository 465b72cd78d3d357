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
