"""Writing into a training's output directory safely: files replaced atomically
(a reader or a killed writer never leaves a half-written file), metrics.json
appended that way, and one training per directory."""

import errno
import fcntl
import glob
import json
import os
import tempfile
import weakref
from typing import IO, Callable

from detectron2.utils.events import JSONWriter

LOCK_FILE = "train.lock"
TMP_INFIX = ".tmp-"


class DiskFullError(OSError):
    """A file could not be written: no space left on its device (or quota)."""

    def __init__(self, path: str, directory: str, error: OSError):
        kept = "its previous version is intact; " if os.path.exists(path) else ""
        super().__init__(
            f"cannot write {path}: the disk of {directory} is full ({error.strerror}); {kept}"
            "free some space, then continue with --resume"
        )
        self.errno = error.errno


class _WriteErrors:
    """A file whose failed writes are remembered: torch.save reports them only as
    ``unexpected pos``, without the OSError (e.g. no space left) behind it."""

    def __init__(self, file: IO[bytes]):
        self._file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self._file.write(data)
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name: str):
        return getattr(self._file, name)


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Calls `write` on a temporary file beside `path` (same directory, so the
    rename stays on one file system), flushes it to disk and renames it to `path`.
    Until the rename, `path` keeps its old content; a killed process leaves at
    most a hidden ``.<name>.tmp-*`` file behind.

    Raises:
        DiskFullError: naming `path` and its directory, when the disk is full.
    """
    directory, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}{TMP_INFIX}")
    os.close(fd)
    recorded = None
    try:
        with open(tmp, "wb") as f:
            recorded = _WriteErrors(f)
            write(recorded)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        error = e if isinstance(e, OSError) else recorded and recorded.error
        if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(path, directory, error) from e
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Makes a rename in `directory` survive a power loss, not only a killed process."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Lines(list):
    """The file handle JSONWriter writes to: keeps the lines of one write()."""

    def write(self, text: str) -> None:
        self.append(text)

    def flush(self) -> None:
        pass


class AtomicJSONWriter(JSONWriter):
    """detectron2's JSONWriter (one JSON object per line, appended to the file)
    whose every write replaces the file atomically with the old lines plus the
    new ones, so metrics.json never ends in a partial line."""

    def __init__(self, json_file: str, window_size: int = 20):
        super().__init__(json_file, window_size)
        self._file_handle.close()
        self._file_handle = _Lines()
        self._json_file = json_file

    def write(self):
        super().write()
        if not self._file_handle:
            return
        new = "".join(self._file_handle).encode()
        self._file_handle.clear()
        with open(self._json_file, "rb") as f:
            old = f.read()
        atomic_write(self._json_file, lambda f: f.write(old + new))

    def close(self):
        pass


def _not_in_forked_children(lock: IO[str]) -> None:
    """A forked child (a data-loader worker) shares the locked open file, and
    flock is released only when every descriptor of it is closed: the lock would
    outlive a killed training by as long as its workers take to notice. Each
    child's descriptor is pointed to /dev/null instead (not unlocked: that would
    unlock the parent too)."""
    held = weakref.ref(lock)

    def release_in_child() -> None:
        lock = held()
        if lock is not None and not lock.closed:
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, lock.fileno())
            os.close(null)

    os.register_at_fork(after_in_child=release_in_child)


def drop_metrics_from(json_file: str, iteration: int) -> None:
    """Removes the lines of iteration `iteration` and later from `json_file`
    (metrics.json): a training resumed there writes them again."""
    if not os.path.isfile(json_file):
        return
    with open(json_file, "rb") as f:
        lines = f.read().decode().splitlines(keepends=True)
    kept = [line for line in lines if json.loads(line).get("iteration", -1) < iteration]
    if len(kept) < len(lines):
        atomic_write(json_file, lambda f: f.write("".join(kept).encode()))


class OutputDirInUseError(RuntimeError):
    """Another process trains into the same output directory."""


def lock_output_dir(output_dir: str) -> IO[str]:
    """Takes the exclusive lock of `output_dir` (the file train.lock in it) for
    as long as the returned file stays open, i.e. until the process ends: the
    operating system releases it even when the process is killed, so a directory
    left by a killed run can be resumed at once. The temporary files of
    :func:`atomic_write` that a killed run left there are removed.

    Raises:
        OutputDirInUseError: another process holds it.
    """
    os.makedirs(output_dir, exist_ok=True)
    lock = open(os.path.join(output_dir, LOCK_FILE), "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        owner = lock.read().strip() or "another process"
        lock.close()
        raise OutputDirInUseError(
            f"{output_dir} is in use by another training ({owner}): wait for it to finish or stop "
            "it, then rerun with --resume to continue it, or give this run another "
            "train.output_dir=..."
        ) from None
    lock.truncate(0)
    lock.write(f"pid {os.getpid()}\n")
    lock.flush()
    _not_in_forked_children(lock)
    for stale in glob.glob(os.path.join(glob.escape(output_dir), f".*{TMP_INFIX}*")):
        os.remove(stale)
    return lock
