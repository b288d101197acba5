"""Starting a helper process (the history reader, the cluster uplink), and its first steps.

A helper is a fresh interpreter (`python -m chatd.MODULE FD ARGS...`), not a fork of the
parent: it shares no library state with the parent (SQLite's per-process lock state, a
Redis client's sockets). Only its channel is inherited (every other fd of the parent is
close-on-exec), and SIGINT/SIGHUP stay blocked until it ignores them: stopping and
reloading are the parent's business.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys

from chatd import logsetup


def spawn(module: str, args: list[str],
          kind: socket.SocketKind = socket.SOCK_STREAM) -> tuple[int, socket.socket]:
    """Start `python -m module FD *args`; returns (its pid, our end of its channel, a
    socket pair of `kind`)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, kind)
    try:
        os.set_inheritable(theirs.fileno(), True)
        argv = [sys.executable, "-m", module, str(theirs.fileno()), *args]
        pid = os.posix_spawn(sys.executable, argv, os.environ,
                             setsigmask={signal.SIGINT, signal.SIGHUP})
    except OSError:
        ours.close()
        raise
    finally:
        theirs.close()
    return pid, ours


def begin(name: str, session: str, log_level: str) -> None:
    """A helper's first steps: the parent's signals ignored, logging as `session`, and
    `name` as its process name (/proc/PID/comm), to tell it from the sessions."""
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    logsetup.setup(log_level)
    logsetup.set_session(session)
    name_process(name)


def name_process(name: str) -> None:
    """`name` as this process's name (/proc/PID/comm: what ps and top show)."""
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as fh:
        fh.write(name)

