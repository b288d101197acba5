"""The parent's side of the spare pool: how many spares to keep, and starting sessions.

The parent never forks a session while its fork server (chatd/zygote.py) runs: it asks
the server for spares and hands each accepted client to one (SCM_RIGHTS). How many it
keeps waiting is `PoolSize`'s business (sans-I/O, fed the time): `server.spare_children`
of them, or with the default (-1, "auto") as many as the recent arrival rate wants over
the next `LEAD` seconds, at least AUTO_MIN and at most `server.spare_max`; a burst raises
the pool at once, and it shrinks again once the burst has been out of the window for
WINDOW seconds.

`SparePool` is what the parent's loop (chatd/master.py) calls: it starts a session for
each admitted client (`admit`: a spare, or a fork here), keeps the clients that wait for
a spare, asks the fork server (through chatd/zygotelink.py) for what the pool lacks
(`step`), and forks in the parent when there is no fork server (it is starting, or gone)
or it is stuck.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import signal
import socket
import ssl
import time
from collections import deque
from typing import TYPE_CHECKING

from chatd import channel, child, sandbox
from chatd.config import Config
from chatd.sessiontable import SessionTable
from chatd.zygotelink import ZygoteLink

if TYPE_CHECKING:
    from chatd.master import Master

log = logging.getLogger("chatd.master")
AUTO = -1  # server.spare_children: follow the arrival rate
AUTO_MIN = 2  # spares kept when nobody has come for a while
LEAD = 0.5  # seconds of arrivals at the recent peak rate the pool holds
WINDOW = 10  # seconds of arrivals remembered (one-second buckets)
# Without the fork server (it is starting, or gone), the parent forks sessions itself.
# Forks per turn of the loop: each stalls routing for milliseconds, so between a few of
# them the loop routes what the sessions it already has are waiting for.
FORKS_PER_TURN = 4
REFILL_QUIET = 0.05  # seconds without a new client before spare processes are forked
# Seconds the fork server may go without delivering a spare it owes before the parent
# takes it for stuck and forks for the waiting clients itself (FORKS_PER_TURN a turn).
WAIT_LIMIT = 2.0
# Spares asked for at once while clients wait (with the adaptive pool): each batch costs
# the fork server a middle process (chatd/zygote.py), so a burst is served in batches.
BURST_BATCH = 8


class PoolSize:
    """How many spares to keep (sans-I/O: fed arrivals and the time)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.buckets: deque[list[int]] = deque()  # [second, arrivals], oldest first

    def arrived(self, now: float) -> None:
        second = int(now)
        if self.buckets and self.buckets[-1][0] == second:
            self.buckets[-1][1] += 1
        else:
            self.buckets.append([second, 1])
        self._expire(second)

    def _expire(self, second: int) -> None:
        while self.buckets and self.buckets[0][0] <= second - WINDOW:
            self.buckets.popleft()

    def peak_rate(self, now: float) -> int:
        """The most arrivals in one second of the last WINDOW seconds."""
        self._expire(int(now))
        return max((n for _s, n in self.buckets), default=0)

    def target(self, now: float) -> int:
        cfg = self.config
        if cfg.spare_children != AUTO:
            return cfg.spare_children
        want = math.ceil(self.peak_rate(now) * LEAD)
        return max(min(AUTO_MIN, cfg.spare_max), min(cfg.spare_max, want))


def cap(config: Config) -> int:
    """The most spares there can be (for the open-file limit)."""
    return config.spare_max if config.spare_children == AUTO else config.spare_children


class SparePool:
    """The parent's spares: handing clients to them, the fork server, forking here."""

    def __init__(self, master: Master) -> None:
        self.master = master
        self.table: SessionTable = master.table
        self.last_accept = 0.0
        # Spares come from the fork server (chatd/zygote.py); clients admitted while none
        # is there wait here, oldest first: (conn, ip, over_tls, irc).
        self.size = PoolSize(master.config)
        self.zygote = ZygoteLink(master.config, master.sel, self._new_spare, self._zygote_lost)
        self.waiting: deque[tuple[socket.socket, str, bool, bool]] = deque()
        # The fork server's `heard` when we last said it was stuck: once a stall, not once
        # a turn (a stuck server stays stuck until a spare comes, and clients keep coming).
        self.stall_told: float | None = None

    @property
    def spares(self) -> dict[int, socket.socket]:
        return self.table.spares

    def start(self) -> None:
        # Sessions forked by the fork server come to us as orphans (chatd/zygote.py).
        if sandbox.become_subreaper():
            self.zygote.start()
        else:
            log.warning("no PR_SET_CHILD_SUBREAPER here: the parent forks every session")

    def refill_wanted(self, now: float) -> bool:
        """Whether the parent should fork spares itself (there is no fork server)."""
        return self.master.life.running and not self.zygote.up and \
            len(self.spares) < self.size.target(now)

    def timeout(self, now: float, refill: bool) -> float | None:
        """Until the quiet moment to fork spares in, the next fork for a waiting client,
        the fork server's WAIT_LIMIT, or its restart."""
        deadlines = []
        if refill:
            deadlines.append(max(0.0, REFILL_QUIET - (now - self.last_accept)))
        if self.waiting and not self.zygote.up:  # forked here, a few a turn
            deadlines.append(0.0)
        elif self.waiting and self.zygote.asked:  # (the fork server's WAIT_LIMIT)
            deadlines.append(max(0.0, self.zygote.heard + WAIT_LIMIT - now))
        restart = self.zygote.restart_at
        if restart is not None and self.master.life.running:
            deadlines.append(max(0.0, restart - now))
        return min(deadlines, default=None)

    def step(self) -> None:
        """Each turn of the loop: restart the fork server if it is time, then the pool."""
        restart = self.zygote.restart_at
        if restart is not None and self.master.life.running and time.monotonic() >= restart:
            self.zygote.start()
        self._pool_step(time.monotonic())

    def idle(self, now: float) -> None:
        """The loop had nothing to do (`now`: when it began waiting) and refill_wanted().
        Only when idle: a fork stalls this loop for milliseconds, and a burst of
        clients is better served by the spares left plus forking on accept."""
        if now - self.last_accept >= REFILL_QUIET:
            self._fork_spare()

    def stop(self) -> None:
        """The parent stops: the fork server exits, waiting clients are closed."""
        self.zygote.stop()
        self.close_waiting()

    def admit(self, conn: socket.socket, ip: str, over_tls: bool, irc: bool,
              now: float) -> bool:
        """Start a session for an admitted client (closes `conn` unless it waits for a
        spare); True if that took a fork."""
        self.size.arrived(now)
        if self.zygote.up and not self.spares:  # one is on its way (_pool_step asks for it)
            self.waiting.append((conn, ip, over_tls, irc))
            return False
        try:
            if self._hand_to_spare(conn, ip, over_tls, irc):
                return False
            self._fork(conn, ip, over_tls, irc)
        except OSError as exc:
            log.error("fork failed, dropping %s: %s", ip, exc)
        finally:
            conn.close()
        return True

    def _spawn(self, worker: child.SessionWorker) -> tuple[int, socket.socket]:
        """Fork a session process that runs `worker` (built here, before the fork).

        Signals stay blocked across fork() so the new process cannot run our handlers
        before its init_process() resets them. Returns (pid, our end of the channel).
        """
        signals = self.master.signals
        ours, worker.chan = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
            ours.close()
            worker.chan.close()
            raise
        if pid == 0:  # the session process
            worker.main()  # never returns
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
        worker.chan.close()
        return pid, ours

    def _fork_spare(self) -> None:
        """Fork a session process ahead of time; it waits for a client on its channel."""
        try:
            worker = child.SessionWorker(self.master.config, tls_context=self._tls_context())
            pid, ours = self._spawn(worker)
        except OSError as exc:
            log.error("cannot fork a spare session process: %s", exc)
            return
        self.spares[pid] = ours

    def _pool_step(self, now: float) -> None:
        """Ask the fork server for what the pool and the waiting clients lack; retire a
        spare the pool no longer wants; fork for waiting clients if the server is stuck."""
        if not self.master.life.running:
            return
        target = self.size.target(now)
        if self.zygote.up:
            want = target + len(self.waiting) - len(self.spares) - self.zygote.asked
            if want > 0 and self.waiting and self.master.config.spare_children == AUTO:
                want = max(want, BURST_BATCH)  # a burst: fewer middle processes
            self.zygote.ask(want)
            if len(self.spares) > target and not self.waiting:
                pid, chan = self.spares.popitem()
                chan.close()  # it exits
                self.table.retiring.add(pid)
                self.table.kill_deadline[pid] = now + self.master.router.stop_time()
        if self.waiting and (not self.zygote.up or self.zygote.stalled(now, WAIT_LIMIT)):
            if self.zygote.up and self.zygote.heard != self.stall_told:
                self.stall_told = self.zygote.heard
                log.warning("no spare from the fork server for %gs: forking here until one "
                            "comes", WAIT_LIMIT)
            for _ in range(min(FORKS_PER_TURN, len(self.waiting))):
                self._fork_waiting()

    def _fork_waiting(self) -> None:
        conn, ip, over_tls, irc = self.waiting.popleft()
        try:
            self._fork(conn, ip, over_tls, irc)
        except OSError as exc:
            log.error("fork failed, dropping %s: %s", ip, exc)
        finally:
            conn.close()

    def _new_spare(self, pid: int, chan: socket.socket) -> None:
        """A spare from the fork server: the longest-waiting client's, or the pool's."""
        self.spares[pid] = chan
        while self.waiting and self.spares:
            entry = self.waiting.popleft()
            conn, ip, over_tls, irc = entry
            try:
                if not self._hand_to_spare(conn, ip, over_tls, irc):  # none was usable
                    self.waiting.appendleft(entry)
                    return
            except OSError as exc:
                log.error("cannot hand %s to a spare: %s", ip, exc)
            conn.close()

    def _zygote_lost(self) -> None:
        """The fork server is gone: clients waiting for it are forked here (by
        _pool_step, a few a turn), or closed if we are stopping."""
        if not self.master.life.running:
            self.close_waiting()

    def fork_waiting(self) -> None:
        """Fork here for every client still waiting for a spare (the fork server is gone,
        or an upgrade is about to close what is not a session yet)."""
        while self.waiting:
            self._fork_waiting()

    def close_waiting(self) -> None:
        """Stopping: clients that never got a session are closed."""
        while self.waiting:
            self.waiting.popleft()[0].close()

    def _hand_to_spare(self, conn: socket.socket, ip: str, over_tls: bool = False,
                       irc: bool = False) -> bool:
        """Pass the accepted socket to a pre-forked process (SCM_RIGHTS); False if none."""
        while self.spares:
            pid = next(iter(self.spares))  # the oldest: it is the readiest
            chan = self.spares.pop(pid)
            token = secrets.token_hex(8)
            hello = channel.control(channel.client(token, ip, over_tls, irc))
            try:
                socket.send_fds(chan, [hello], [conn.fileno()])
            except OSError as exc:  # it died, or its channel is full: retire it
                log.warning("spare pid %d unusable: %s", pid, exc)
                chan.close()
                continue
            chan.setblocking(False)
            self.master.register(pid, chan, token, ip, over_tls)
            return True
        return False

    def _fork(self, conn: socket.socket, ip: str, over_tls: bool = False,
              irc: bool = False) -> None:
        token = secrets.token_hex(8)
        worker = child.SessionWorker(self.master.config, conn, token, ip, over_tls,
                                     self._tls_context(), irc)
        pid, ours = self._spawn(worker)
        ours.setblocking(False)
        self.master.register(pid, ours, token, ip, over_tls)

    def _tls_context(self) -> ssl.SSLContext | None:
        tls = self.master.tls
        return tls.context if tls is not None else None
