"""One parent per data dir: an flock() on the directory; `DATA/chatd.pid` names the parent.

Two parents serving one data dir would hand out the same message ids. The lock is an
flock() on an open file, so the kernel drops it when the parent dies however it dies
(a `kill -9` too): a new `chatd serve` on the same data dir starts at once, while the
old parent's session processes (which closed the file right after their fork) run on.
The lock survives the parent's re-exec on `chatd upgrade` (same open file, same PID).
`chatd.pid` holds the parent's PID, which `chatd upgrade --data-dir` signals.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

PID_FILE = "chatd.pid"


class DataDirBusy(Exception):
    """Another live parent holds the data dir."""


def pid_path(data_dir: Path) -> Path:
    return data_dir / PID_FILE


def lock(data_dir: Path) -> int:
    """Lock `data_dir` for this process and write our pid; the lock's fd (keep it open:
    closing it unlocks). Raises DataDirBusy naming the holder.

    The lock is on the directory itself, so that it works where nothing can be written
    (a read-only data dir is then reported by the store, with what to do)."""
    fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = read_pid(data_dir)
        os.close(fd)
        who = f"pid {holder}" if holder else "another process"
        raise DataDirBusy(f"the data dir {data_dir} is in use by {who} (chatd serve "
                          f"already running?)") from None
    except OSError:
        os.close(fd)
        raise
    tmp = pid_path(data_dir).with_suffix(".tmp")
    with contextlib.suppress(OSError):  # (read-only: the store says so, at once)
        tmp.write_text(f"{os.getpid()}\n")
        os.replace(tmp, pid_path(data_dir))
    return fd


def read_pid(data_dir: Path) -> int | None:
    """The pid in the pid file, or None if there is none or it is not a number."""
    with contextlib.suppress(OSError, ValueError):
        return int(pid_path(data_dir).read_text().strip() or "x")
    return None


def holder(data_dir: Path) -> int | None:
    """The pid of the parent serving `data_dir` now (the file is locked), else None."""
    try:
        fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return read_pid(data_dir)
    finally:
        os.close(fd)
    return None
