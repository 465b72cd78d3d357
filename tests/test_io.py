"""pfdeploy._io: atomic writes follow the umask, survive a full or read-only disk in one line, and clean
up after killed runs; output paths are checked before any work."""

from __future__ import annotations

import errno
import os
import pathlib
import stat
import subprocess
import sys
import tempfile
import time

import pytest

from pfdeploy._io import (
    OutputError,
    atomic_path,
    check_output_dir,
    check_output_file,
    refuse_overwrite,
    remove_stale_temp_dirs,
    temporary_dir,
    write_bytes_atomic,
    write_json_atomic,
)
from pfdeploy.errors import PfdeployError


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def leftovers(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def umask():
    """umask(value): set the process umask for this test (restored afterwards)."""
    original = os.umask(0o022)
    os.umask(original)
    yield os.umask
    os.umask(original)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_artifacts_follow_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    write_bytes_atomic(tmp_path / "a.bin", b"x")
    write_json_atomic(tmp_path / "b.json", {"a": 1})
    with atomic_path(tmp_path / "c.onnx") as tmp:
        tmp.write_bytes(b"y")
    for name in ("a.bin", "b.json", "c.onnx"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_an_explicit_mode_wins_over_the_umask(tmp_path, umask):
    umask(0o077)
    write_bytes_atomic(tmp_path / "config.pbtxt", b"x", mode=0o644)
    assert stat.S_IMODE((tmp_path / "config.pbtxt").stat().st_mode) == 0o644


def _full_disk_after(nbytes: int):
    """A Path.write_bytes that writes `nbytes` and then fails like a full disk."""
    def write_bytes(self, data):
        with open(self, "wb") as f:
            f.write(data[:nbytes])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write_bytes


def test_full_disk_is_one_line_naming_the_path_and_nothing_is_half_written(tmp_path, monkeypatch):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"the previous, complete artifact")
    monkeypatch.setattr(pathlib.Path, "write_bytes", _full_disk_after(3))
    with pytest.raises(OutputError) as err:
        write_bytes_atomic(target, b"a new artifact that does not fit")
    message = str(err.value)
    assert f"cannot write {target}: No space left on device" in message and "free space" in message
    assert "\n" not in message and isinstance(err.value, PfdeployError)
    assert target.read_bytes() == b"the previous, complete artifact"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("code, fix", [(errno.EROFS, "read-only"), (errno.EACCES, "permissions"),
                                       (errno.EDQUOT, "quota")])
def test_read_only_and_permission_errors_are_one_line(tmp_path, monkeypatch, code, fix):
    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(tmp_path))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(OutputError, match=f"cannot write {tmp_path / 'x.json'}: .*{fix}"):
        write_json_atomic(tmp_path / "x.json", {})
    assert not (tmp_path / "x.json").exists()


def test_a_bug_inside_the_block_keeps_its_type(tmp_path):
    with pytest.raises(ZeroDivisionError), atomic_path(tmp_path / "x") as tmp:
        tmp.write_bytes(b"partial")
        _ = 1 / 0
    assert list(tmp_path.iterdir()) == []


def test_output_checks_before_any_work(tmp_path, monkeypatch):
    folder = tmp_path / "existing"
    folder.mkdir()
    with pytest.raises(OutputError, match="is a directory; give a file path"):
        check_output_file(folder, "--output")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OutputError, match=f"{a_file} is a file, not a folder"):
        check_output_file(a_file / "sub" / "m.onnx", "--output")
    with pytest.raises(OutputError, match="is a file; give a folder"):
        check_output_dir(a_file, "--out")
    assert check_output_file(tmp_path / "new" / "deeper" / "m.onnx") == tmp_path / "new" / "deeper" / "m.onnx"

    class ReadOnly:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(os, "statvfs", lambda path: ReadOnly())
    with pytest.raises(OutputError, match="read-only file system"):
        check_output_file(tmp_path / "m.onnx", "--output")
    with pytest.raises(OutputError, match="read-only file system"):
        check_output_dir(tmp_path / "repo", "--repo")


def test_an_output_that_is_the_input_is_refused(tmp_path):
    source = tmp_path / "m.onnx"
    source.write_bytes(b"fp32")
    (tmp_path / "link.onnx").symlink_to(source)
    os.link(source, tmp_path / "hard.onnx")
    for output in (source, tmp_path / "link.onnx", tmp_path / "hard.onnx", tmp_path / "." / "m.onnx"):
        with pytest.raises(OutputError, match="is the input .*choose another output path"):
            refuse_overwrite(output, [None, source], "--output")
    refuse_overwrite(tmp_path / "other.onnx", [source], "--output")


def test_stale_temporaries_of_killed_runs_are_removed(tmp_path):
    dead, old = dead_pid(), time.time() - 3600
    stale = [tmp_path / f".m.onnx.{dead}.abcd1234.tmp", tmp_path / f".report.json.{dead}.zz_99x0a.tmp",
             tmp_path / ".m.onnx.q1w2e3r4.tmp"]  # the last: an earlier pfdeploy's name, no pid
    kept = [tmp_path / f".m.onnx.{os.getpid()}.live0000.tmp",  # a writer that is still running
            tmp_path / ".other.json.q1w2e3r4.tmp",  # no pid, not the file being written: not ours to judge
            tmp_path / ".notes.tmp"]
    for path in stale + kept:
        path.write_bytes(b"partial")
        os.utime(path, (old, old))
    write_bytes_atomic(tmp_path / "m.onnx", b"complete")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.onnx", *(p.name for p in kept)])


def test_scratch_folders_are_named_by_pid_and_stale_ones_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = dead_pid()
    stale = tmp_path / f"pfdeploy-quant-{dead}-abcd1234"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "augmented.onnx").write_bytes(b"x" * 100)
    live = tmp_path / f"pfdeploy-quant-{os.getpid()}-live0000"
    live.mkdir()
    unrelated = tmp_path / "pfdeploy-notes"
    unrelated.mkdir()
    # Without a pid (an earlier pfdeploy): removed only when untouched for a day; TMPDIR is shared.
    abandoned, recent = tmp_path / "pfdeploy-quant-abcdefgh", tmp_path / "pfdeploy-calib-hgfedcba"
    abandoned.mkdir()
    recent.mkdir()
    two_days_ago = time.time() - 2 * 86400
    os.utime(abandoned, (two_days_ago, two_days_ago))
    with temporary_dir("calib") as scratch:
        assert scratch.parent == tmp_path and scratch.name.startswith(f"pfdeploy-calib-{os.getpid()}-")
        assert not stale.exists() and live.exists() and not abandoned.exists()
    assert not scratch.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, unrelated.name, recent.name])
    assert remove_stale_temp_dirs(tmp_path) == []
