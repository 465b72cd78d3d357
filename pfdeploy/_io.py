"""Small file helpers shared by every stage: atomic writes, output checks, temporaries and hashes.

Atomic writes go to a temporary `.NAME.<pid>.<random>.tmp` beside the target and are renamed onto it
only when complete, with the mode the umask gives (0666 & ~umask), so a crash, Ctrl-C, SIGTERM or a
full disk never leaves a partial artifact. Temporaries of runs that were killed (their pid is dead)
are removed by the next write into the same folder. Scratch folders live under $TMPDIR as
`pfdeploy-<kind>-<pid>-<random>` and are removed the same way. A write that fails for a reason the
user can fix (disk full, read-only file system, permissions, a directory in the way) raises
`OutputError`, one line naming the path and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from pfdeploy.errors import PfdeployError

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"
TEMP_DIR_PREFIX = "pfdeploy-"
# `.NAME.<pid>.<random>.tmp` (this version) and `.NAME.<random>.tmp` (earlier ones, no pid).
_TEMP_FILE = re.compile(r"^\.(?P<name>.+?)\.(?:(?P<pid>\d+)\.)?(?P<rand>[a-z0-9_]{8})\.tmp$")
_TEMP_DIR = re.compile(r"^pfdeploy-(?P<kind>[a-z0-9]+)-(?:(?P<pid>\d+)-)?(?P<rand>[a-z0-9_]{8})$")
_PROCESS_START = time.time()
_UMASK_LOCK = threading.Lock()

# errno -> what the user can do about it. Other OSErrors are bugs and keep their traceback.
FILESYSTEM_FIXES = {
    errno.ENOSPC: "free space on that disk or write somewhere else",
    errno.EDQUOT: "free space within your disk quota or write somewhere else",
    errno.EFBIG: "the file is too large for that file system; write somewhere else",
    errno.EROFS: "that file system is read-only; write to a writable folder",
    errno.EACCES: "check the permissions, or use another path",
    errno.EPERM: "check the permissions, or use another path",
    errno.EISDIR: "it is a directory; give a file path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.ENAMETOOLONG: "choose a shorter file name",
    errno.EIO: "the disk reported an I/O error; check it or write somewhere else",
}


class OutputError(PfdeployError):
    """An output cannot be written: disk full, read-only file system, permissions, a file or folder in the way."""


def is_filesystem_error(exc: BaseException) -> bool:
    """True for an OSError the user can fix (FILESYSTEM_FIXES): disk full, read-only, permissions, ..."""
    return isinstance(exc, OSError) and exc.errno in FILESYSTEM_FIXES


def filesystem_message(exc: OSError, path: str | os.PathLike | None = None) -> str:
    """One line for a filesystem OSError: 'cannot write PATH: reason; fix' when writing `path`, else
    'FILE: reason; fix' with the error's own file name."""
    reason = exc.strerror or os.strerror(exc.errno or 0)
    fix = FILESYSTEM_FIXES.get(exc.errno, "check the path")
    if path is None:
        if exc.filename is None:  # e.g. ENOSPC from a library's write(): no file name to show
            return f"{reason} (temporary files go to {tempfile.gettempdir()}); {fix}"
        return f"{exc.filename}: {reason}; {fix}"
    other = str(exc.filename) if exc.filename is not None else ""
    detail = f" ({other})" if other and other != str(path) and not other.endswith(TEMP_SUFFIX) else ""
    return f"cannot write {path}: {reason}{detail}; {fix}"


def write_error(path: str | os.PathLike, exc: OSError) -> OutputError:
    """The OutputError for `exc` raised while writing `path` (nothing was written there)."""
    return OutputError(filesystem_message(exc, path) + "; nothing was written")


# --- checks before any work ----------------------------------------------------------------------


def _writable_folder(folder: Path, shown: str, what: str) -> None:
    """Raise OutputError unless `folder` (an existing directory) can take new files."""
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only:
        raise OutputError(f"{what} {shown}: {folder} is on a read-only file system; write to a writable folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {shown}: {folder} is not writable; fix its permissions or choose another path")


def _existing_ancestor(path: Path) -> Path:
    return next((p for p in path.parents if p.exists()), Path("."))


def check_output_file(path: str | os.PathLike, what: str = "output") -> Path:
    """Check before any work that a file can be written at `path`; return it.

    Refuses an existing directory, a parent that is a file, and a read-only or non-writable folder.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a directory; give a file path such as {path / path.name}.onnx")
    ancestor = path.parent if path.parent.exists() else _existing_ancestor(path)
    if not ancestor.is_dir():
        raise OutputError(f"{what} {path}: {ancestor} is a file, not a folder; choose another path")
    _writable_folder(ancestor, str(path), what)
    return path


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Check before any work that `path` is (or can become) a writable folder; return it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file; give a folder")
    ancestor = path if path.exists() else _existing_ancestor(path)
    if not ancestor.is_dir():
        raise OutputError(f"{what} {path}: {ancestor} is a file, not a folder; choose another path")
    _writable_folder(ancestor, str(path), what)
    return path


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when `a` and `b` name the same file: equal paths, a symlink to it, or a hard link."""
    a, b = Path(a), Path(b)
    try:
        if os.path.samefile(a, b):
            return True
    except OSError:
        pass
    return a.resolve() == b.resolve()


def refuse_overwrite(output: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], what: str) -> None:
    """Raise OutputError when `output` is (a link to) one of `inputs`, before any work."""
    for source in inputs:
        if source is not None and same_file(output, source):
            raise OutputError(f"{what} {output} is the input {source}; writing it would destroy the input: "
                              "choose another output path")


# --- atomic writes -------------------------------------------------------------------------------


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (/proc), else under a lock."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets from open(): 0666 & ~umask (mkstemp's 0600 is for secrets)."""
    return 0o666 & ~current_umask()


def process_start() -> float:
    """time.time() when this process started using pfdeploy (temporaries older than it are not its own)."""
    return _PROCESS_START


def pid_alive(pid: int) -> bool:
    """True when process `pid` exists and is not a zombie (a pid we cannot signal counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    return True


def _stale(pid: str | None, path: Path, older_than: float) -> bool:
    """A temporary is stale when its writer's pid is dead, or (no pid: an earlier pfdeploy's name)
    when it was last modified before `older_than` (a time.time() value)."""
    if pid is not None:
        return not pid_alive(int(pid))
    try:
        return path.lstat().st_mtime < older_than
    except OSError:
        return False


def remove_stale_temporaries(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove the `.NAME.<pid>.<random>.tmp` files of killed runs in `folder`; return what went.

    Any file of that form whose pid is dead goes; one without a pid (an earlier pfdeploy's
    `.NAME.<random>.tmp`) only when it belongs to `name` and is older than this process.
    """
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            match = _TEMP_FILE.match(entry.name)
            if not match or (match["pid"] is None and match["name"] != name):
                continue
            if entry.is_file(follow_symlinks=False) and _stale(match["pid"], Path(entry.path), _PROCESS_START):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    for path in removed:
        log.info("removed %s, left by a run that was killed", path)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    A crash, Ctrl-C or SIGTERM inside the block leaves any existing `path` untouched and no
    partial file; a SIGKILLed run's temporary is removed by the next write into the folder. The
    file gets `mode` (default 0666 & ~umask). A filesystem OSError (disk full, read-only,
    permissions) becomes an OutputError naming `path`.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target.parent, target.name)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=TEMP_SUFFIX, dir=target.parent)
        os.close(fd)
    except OSError as exc:
        if is_filesystem_error(exc):
            raise write_error(target, exc) from exc
        raise
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, file_mode() if mode is None else mode)
        os.replace(tmp_path, target)
    except OSError as exc:
        if is_filesystem_error(exc):
            raise write_error(target, exc) from exc
        raise
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, mode: int | None = None) -> Path:
    """Write `data` to `path` atomically and return the path."""
    with atomic_path(path, mode=mode) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj) -> Path:
    """Write `obj` as indented JSON to `path` atomically and return the path."""
    return write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


# --- scratch folders under $TMPDIR ---------------------------------------------------------------


def remove_stale_temp_dirs(root: str | os.PathLike | None = None) -> list[Path]:
    """Remove `pfdeploy-<kind>-<pid>-<random>` folders of killed runs under `root` (default $TMPDIR).

    $TMPDIR is shared: a folder without a pid (an earlier pfdeploy's `pfdeploy-<kind>-<random>`) goes
    only when untouched for a day, so a run of an older version still going is left alone.
    """
    removed = []
    day_ago = time.time() - 86400
    with contextlib.suppress(OSError):
        for entry in os.scandir(root or tempfile.gettempdir()):
            match = _TEMP_DIR.match(entry.name)
            if match and entry.is_dir(follow_symlinks=False) and _stale(match["pid"], Path(entry.path), day_ago):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(Path(entry.path))
    for path in removed:
        log.info("removed %s, left by a run that was killed", path)
    return removed


@contextlib.contextmanager
def temporary_dir(kind: str) -> Iterator[Path]:
    """A scratch folder `$TMPDIR/pfdeploy-<kind>-<pid>-<random>`, removed when the block ends
    (also on Ctrl-C and SIGTERM); stale ones of killed runs are removed first."""
    remove_stale_temp_dirs()
    try:
        folder = Path(tempfile.mkdtemp(prefix=f"{TEMP_DIR_PREFIX}{kind}-{os.getpid()}-"))
    except OSError as exc:
        if is_filesystem_error(exc):
            raise OutputError(filesystem_message(exc, tempfile.gettempdir())
                              + "; or set TMPDIR to a writable folder with free space") from exc
        raise
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- hashes --------------------------------------------------------------------------------------


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's contents, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
