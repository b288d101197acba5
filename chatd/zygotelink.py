"""The parent's link to its fork server (chatd/zygote.py).

`ZygoteLink` starts the fork server, asks it for spares, receives them, and restarts it
(after chatd/authhelper.py's RestartPolicy delay) when it dies; the loop calls `start()`
when `restart_at` has come and hands reaped pids to `reaped()`, as for the other helpers.
How many spares to ask for is chatd/sparepool.py's business.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import time
from collections.abc import Callable

from chatd import helperproc, zygote
from chatd.authhelper import RestartPolicy
from chatd.config import Config
from chatd.sessiontable import reaped_helper

log = logging.getLogger("chatd.master")
RECEIVE_BATCH = 256  # spares taken from the fork server per turn of the loop
# Spares asked for at a time: each is a new process starting up, and a thousand of them
# at once would share the cores with the parent and every session alike, so that no
# client is served until all are up. A few at a time, the first clients get the first.
MAX_ASKED = 32


class ZygoteLink:
    def __init__(self, config: Config, sel: selectors.BaseSelector,
                 on_spare: Callable[[int, socket.socket], None],
                 on_lost: Callable[[], None]) -> None:
        self.config = config
        self.sel = sel
        self.on_spare, self.on_lost = on_spare, on_lost
        self.pid: int | None = None
        self.chan: socket.socket | None = None
        self.asked = 0  # spares asked for and not yet received
        self.heard = 0.0  # when a spare last came (or, if none was due, was asked for)
        self.policy = RestartPolicy()
        self.restart_at: float | None = None  # when to start one; None while one runs
        self.old: set[int] = set()  # fork servers that are gone but not yet reaped
        self.retired: set[int] = set()  # of those, the ones we let go (not news)
        self.running = False  # True once the parent may have one (it is a subreaper)

    @property
    def up(self) -> bool:
        return self.chan is not None

    @property
    def pids(self) -> set[int]:
        return self.old | ({self.pid} if self.pid is not None else set())

    def start(self) -> None:
        self.running = True
        try:
            pid, chan = helperproc.spawn("chatd.zygote", [self.config.log_level],
                                         socket.SOCK_SEQPACKET)
        except OSError as exc:
            log.error("cannot start the fork server: %s", exc)
            self.restart_at = self.policy.died(time.monotonic())
            return
        try:
            chan.send(zygote.config_message(self.config))
        except OSError as exc:
            log.error("cannot configure the fork server: %s", exc)
            chan.close()
            self.old.add(pid)
            self.restart_at = self.policy.died(time.monotonic())
            return
        chan.setblocking(False)
        self.pid, self.chan, self.asked, self.restart_at = pid, chan, 0, None
        self.policy.started(time.monotonic())
        self.sel.register(chan, selectors.EVENT_READ, self.ready)
        log.info("fork server: pid %d", pid)

    def ask(self, count: int) -> None:
        """Ask for `count` more spares (they come to `on_spare` as they are forked)."""
        if self.chan is None:
            return
        # Every spare asked for is answered, a pid or -1 (zygote.batch()), for as long as
        # the fork server lives (lost() forgets them): a slow one is not asked again, or
        # what it still owes would come on top, unwanted, and be retired.
        count = min(count, MAX_ASKED - self.asked)
        if count <= 0:
            return
        if not self.asked:
            self.heard = time.monotonic()
        try:
            self.chan.send(zygote.fork_request(count), socket.MSG_DONTWAIT)
        except OSError as exc:
            log.warning("fork server unreachable: %s", exc)
            self.lost()
            return
        self.asked += count

    def stalled(self, now: float, limit: float) -> bool:
        """Whether spares are owed and none has come for `limit` seconds (it is stuck)."""
        return self.up and self.asked > 0 and now - self.heard >= limit

    def ready(self, chan: socket.socket, mask: int) -> None:
        for _ in range(RECEIVE_BATCH):
            try:
                data, fds, _flags, _addr = socket.recv_fds(chan, 16, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, fds = b"", []
            if len(data) != zygote.PID.size:
                for fd in fds:
                    with contextlib.suppress(OSError):
                        socket.socket(fileno=fd).close()
                if data:
                    log.error("fork server broke the rules of its channel: %r", data[:16])
                self.lost()
                return
            self.asked = max(0, self.asked - 1)
            self.heard = time.monotonic()
            pid = zygote.PID.unpack(data)[0]
            if pid > 0 and fds:
                # Close-on-exec, as every fd of ours (recv_fds ignores MSG_CMSG_CLOEXEC):
                # else a helper we start, or the new code after an upgrade, would hold
                # the spare's channel open, and a retired spare would never see its EOF.
                os.set_inheritable(fds[0], False)
                self.on_spare(pid, socket.socket(fileno=fds[0]))

    def lost(self, restart: bool = True) -> None:
        """The fork server is gone (or we let it go): a new one comes after a delay."""
        chan, self.chan = self.chan, None
        if chan is not None:
            self.sel.unregister(chan)
            chan.close()
        if self.pid is not None:
            self.old.add(self.pid)
            if not restart:
                self.retired.add(self.pid)
            self.pid = None
        self.asked = 0
        if restart and self.running:
            self.restart_at = self.policy.died(time.monotonic())
        self.on_lost()

    def restart(self, config: Config) -> None:
        """New settings or a renewed certificate: a fresh fork server with them."""
        self.config = config
        if not self.running:
            return
        if self.chan is not None:
            self.lost(restart=False)
        self.start()

    def stop(self) -> None:
        """The parent stops: the fork server exits on its channel's EOF."""
        self.running = False
        self.restart_at = None
        self.lost(restart=False)

    def reaped(self, pid: int, status: int) -> bool:
        if pid == self.pid:
            self.lost()
        news = self.running and pid not in self.retired
        self.retired.discard(pid)
        return reaped_helper(self.old, pid, status, news, "fork server")
