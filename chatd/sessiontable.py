"""The parent's table of its session processes: slots, spares, kill deadlines, reaping.

No I/O but `os.kill` on a process past its kill deadline (the caller passes the time and
does the waitpid()): the admission caps read this table, the router finds a session's
channel here, and SIGCHLD hands each reaped pid to `reaped()`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Container
from dataclasses import dataclass, field

from chatd import child, outbox
from chatd.admission import source_of
from chatd.protocol import FrameDecoder

log = logging.getLogger("chatd.master")


@dataclass(eq=False)
class Child:
    pid: int
    sid: int
    chan: socket.socket
    token: str  # the session's token (the broker's Member.token); `sid` is its number
    ip: str
    decoder: FrameDecoder
    tls: bool = False  # it came to the TLS listener
    source: str = ""  # what the per-source caps count (admission.source_of)
    out: outbox.Outbox = field(default_factory=outbox.Outbox)
    closing: bool = False  # told to close: it gets nothing more from the broker
    attached: bool = True
    handler: object = None  # the selector callback bound to this child
    writing: bool = False  # its channel is registered for EVENT_WRITE too
    started: float = field(default_factory=time.monotonic)  # for `chatd admin sessions`


def reaped_helper(old: set[int], pid: int, status: int, running: bool, what: str) -> bool:
    """Whether `pid` was one of a helper's ended processes (`old`): then it is forgotten
    and how it ended logged (a warning while the server runs: it was not asked to end)."""
    if pid not in old:
        return False
    old.discard(pid)
    level = logging.WARNING if running else logging.INFO
    log.log(level, "%s (pid %d) ended: %s", what, pid, how_it_ended(status))
    return True


class SessionTable:
    def __init__(self) -> None:
        self.children: dict[int, Child] = {}  # by pid: every session holding a slot
        self.by_sid: dict[int, Child] = {}  # by session number: whose channel is open
        self.per_ip: dict[str, int] = {}  # sessions by source (admission.source_of)
        # Pre-forked session processes waiting for a client: pid -> their channel.
        self.spares: dict[int, socket.socket] = {}
        # Told to exit, holding no slot, not yet reaped: retired spares, killed sessions.
        self.retiring: set[int] = set()
        # pid -> its kill deadline: every process told to end, until it is reaped.
        self.kill_deadline: dict[int, float] = {}
        self.next_sid = 1
        # pid -> pidfd of a session adopted from a dead parent (chatd/adopt.py): not our
        # child, so we cannot reap it, and its pid alone could be reused once it ends.
        self.pidfds: dict[int, int] = {}

    def __len__(self) -> int:
        """Processes of ours in the table not yet reaped."""
        return len(self.children) + len(self.spares) + len(self.retiring)

    def add(self, pid: int, chan: socket.socket, token: str, ip: str,
            max_frame: int, tls: bool = False) -> Child:
        sid = self.next_sid
        self.next_sid += 1
        return self.adopt(pid, sid, chan, token, ip, FrameDecoder(max_frame), tls)

    def adopt(self, pid: int, sid: int, chan: socket.socket, token: str, ip: str,
              decoder: FrameDecoder, tls: bool = False) -> Child:
        """A session under a number it already has (new ones: add(); on upgrade, the
        predecessor's, chatd/handover.py)."""
        kid = Child(pid, sid, chan, token, ip, decoder, tls, source=source_of(ip))
        self.children[pid] = kid
        self.by_sid[sid] = kid
        self.per_ip[kid.source] = self.per_ip.get(kid.source, 0) + 1
        return kid

    def free_slot(self, kid: Child) -> None:
        self.per_ip[kid.source] -= 1
        if not self.per_ip[kid.source]:
            del self.per_ip[kid.source]

    def doom(self, pid: int, deadline: float) -> None:
        """Session `pid` was told to end (or has nothing left to do): it is killed at
        `deadline` if it has not ended by then (a stopped or wedged process holds its slot).
        An earlier deadline stands."""
        if pid in self.children:  # not reaped, so the pid is still ours to signal
            self.kill_deadline.setdefault(pid, deadline)

    def retire_spares(self, deadline: float) -> None:
        """Close the spares' channels: each exits (e.g. after a reload, or at shutdown)."""
        for pid, chan in self.spares.items():
            chan.close()
            self.retiring.add(pid)
            self.kill_deadline[pid] = deadline
        self.spares.clear()

    def next_kill(self, now: float) -> float | None:
        """Seconds until the next kill deadline, if any."""
        return max(0.0, min(self.kill_deadline.values()) - now) if self.kill_deadline else None

    def kill_overdue(self, now: float, helpers: Container[int], why: str) -> list[int]:
        """SIGKILL every process past its kill deadline (SIGCHLD reaps it); the pids."""
        killed = []
        for pid, due in list(self.kill_deadline.items()):
            if due > now:
                continue
            del self.kill_deadline[pid]
            kid = self.children.pop(pid, None)
            what = ("helper" if pid in helpers else "spare") if kid is None \
                else f"session {kid.token}"
            log.warning("pid %d did not stop; killing it (%s, %s)", pid, what, why)
            if kid is not None:  # the caps count it no longer
                self.free_slot(kid)
                self.retiring.add(pid)
            self.kill(pid)
            killed.append(pid)
        return killed

    def kill(self, pid: int) -> None:
        """SIGKILL session `pid` (through its pidfd if we adopted it)."""
        with contextlib.suppress(ProcessLookupError):
            pidfd = self.pidfds.get(pid)
            if pidfd is not None:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)

    def reaped(self, pid: int, status: int) -> None:
        """waitpid() returned `pid` (not a helper's): free what it held, log how it ended.
        The broker hears of a session's end from its channel's EOF, after any last words."""
        self.kill_deadline.pop(pid, None)
        kid = self.children.pop(pid, None)
        if kid is None:
            self.retiring.discard(pid)
            spare = self.spares.pop(pid, None)
            if spare is not None:
                log.warning("spare pid %d ended before it had a client: %s", pid,
                            how_it_ended(status))
                spare.close()
            return
        level = (logging.INFO if os.WIFEXITED(status) and os.WEXITSTATUS(status) ==
                 child.EXIT_OK else logging.WARNING)
        log.log(level, "session %s (pid %d) ended: %s", kid.token, pid, how_it_ended(status))
        self.free_slot(kid)


def how_it_ended(status: int) -> str:
    """A wait() status in words, with the session process's named exit status."""
    return child.exit_reason(status)
