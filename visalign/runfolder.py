"""The run folder's edges: one trainer at a time per folder (an flock on RUN/.lock), checks of the paths the
commands write (--out), and the one-line messages of the file-system errors a user causes (permissions, a
read-only or full disk, a path of another kind)."""

from __future__ import annotations

import errno
import fcntl
import os
import re
from pathlib import Path

LOCK_NAME = ".lock"


class RunFolderError(RuntimeError):
    """A run folder or output path that cannot be used (one-line message)."""


class RunLock:
    """An exclusive flock on RUN/.lock, with the holder's PID written in it, for as long as a run trains. The
    kernel drops the lock when the process ends, however it ends (kill -9 included), so a stale lock never
    blocks the next start; the file itself stays (removing it would race with a process opening it)."""

    def __init__(self, run: Path):
        self.path = run / LOCK_NAME
        self._file = open(self.path, "a+")  # noqa: SIM115 - held open (and locked) for the run's lifetime
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            mine = " (this process)" if holder == str(os.getpid()) else ""
            raise RunFolderError(f"{run} is in use by another training run (PID {holder}{mine} holds {self.path}); "
                                 f"wait for it to end or stop it, or choose another --out") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()

    def release(self) -> None:
        """Unlock (idempotent). Closing the file releases the flock."""
        if not self._file.closed:
            self._file.close()

    def __del__(self):  # a trainer dropped without finishing (an error in its constructor) frees the folder
        self.release()


def check_out(value: str | None, option: str = "--out") -> None:
    """An empty path would make the current directory the output: refused."""
    if value is not None and not str(value).strip():
        raise RunFolderError(f"{option} is empty; accepted: a path, e.g. {option} runs/NAME")


def check_out_folder(value: str, option: str = "--out") -> None:
    """A folder output (a run, a model): empty or an existing file refused."""
    check_out(value, option)
    if Path(value).exists() and not Path(value).is_dir():
        raise RunFolderError(f"{option} {value} is an existing file; accepted: a folder (new, or one this command "
                             f"made)")


def check_out_file(value: str | None, suffixes: tuple[str, ...], option: str = "--out") -> None:
    """A file output: empty, an existing folder or another file type (by its extension) refused; an existing
    file of the same type is overwritten, as usual."""
    if value is None:
        return
    check_out(value, option)
    path = Path(value)
    if path.is_dir():
        raise RunFolderError(f"{option} {value} is a folder; accepted: a file path ending in {', '.join(suffixes)}")
    if path.suffix.lower() not in suffixes:
        raise RunFolderError(f"{option} {value} ends in '{path.suffix}'; accepted: {', '.join(suffixes)}")
    blocked = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:  # else mkdir(parents=True) says only "File exists"
        raise RunFolderError(f"{option} {value}: {blocked} is a file, not a folder; accepted: a path through folders")


# the file-system errors a user causes (a path's permissions, a read-only or full disk, a path of another kind, a
# port another process holds); any other OSError is a bug and keeps its traceback
USER_ERRNOS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.EEXIST: "it exists already",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENAMETOOLONG: "file name too long",
    errno.EADDRINUSE: "address already in use (another process listens there)",
    errno.EADDRNOTAVAIL: "address not available on this machine",
}


def os_error_line(e: OSError, where: str | None = None, training: bool = False) -> str | None:
    """The one line for a user-caused OSError, naming the path (e.filename, else `where`: the command's output
    or port; training: a run that --resume continues), or None when the error is not one a user causes."""
    path = e.filename if e.filename is not None else where
    at = f" {path}" if path else ""
    if e.errno == errno.ENOSPC:
        again = "resume the run (--resume goes on from its last checkpoint)" if training else "run again"
        return f"disk full while writing{at}; free some space and {again}"
    if e.errno in USER_ERRNOS:
        return f"cannot use{at}: {USER_ERRNOS[e.errno]}" if path else USER_ERRNOS[e.errno]
    return None


def named_os_error(e: BaseException, path: Path) -> OSError | None:
    """An I/O failure of a library that does not raise OSError (safetensors' `... (os error 28)`) or an OSError
    without a file name, as an OSError naming `path`; None when `e` is not an I/O failure."""
    if isinstance(e, OSError):
        return OSError(e.errno, e.strerror, str(path)) if e.filename is None and e.errno else None
    found = re.search(r"os error (\d+)", str(e))
    if found is None:
        return None
    code = int(found.group(1))
    return OSError(code, os.strerror(code), str(path))
