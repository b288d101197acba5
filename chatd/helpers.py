"""The helper processes the parent supervises like sessions: today the history reader.

Slow work never runs on the routing loop; a helper does it, and a new one takes over
(after RESTART_PAUSE) when one dies, with what the dead one left unanswered. The parent's
loop calls `start()` when `restart_at` has come, and hands reaped pids to `reaped()`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import time

from chatd import reader
from chatd.broker import Broker
from chatd.config import Config
from chatd.sessiontable import reaped_helper
from chatd.stores import history_location

log = logging.getLogger("chatd.master")


class HistoryReaderHelper:
    def __init__(self, config: Config, sel: selectors.BaseSelector, broker: Broker) -> None:
        self.config = config
        self.sel = sel
        self.broker = broker
        self.link = reader.ReaderLink(config.max_frame)
        self.restart_at: float | None = 0.0  # when to start one; None while one runs
        self.writing = False  # its channel is registered for EVENT_WRITE too
        self.old: set[int] = set()  # readers that are gone but not yet reaped
        self.running = True  # False once the parent stops: none is started again

    @property
    def pids(self) -> set[int]:
        """Its processes not yet reaped."""
        return self.old | ({self.link.pid} if self.link.pid is not None else set())

    def configure(self, config: Config) -> None:
        self.config = config
        self.link.configure(config.max_frame)

    def start(self) -> None:
        cfg = self.config
        try:
            pid, chan = reader.spawn(history_location(cfg.data_dir), cfg.log_level,
                                     cfg.max_memory_mb)
        except OSError as exc:
            log.error("cannot start the history reader: %s", exc)
            self.restart_at = time.monotonic() + reader.RESTART_PAUSE
            return
        self.link.attach(pid, chan, time.monotonic())
        self.sel.register(chan, selectors.EVENT_READ, self.ready)
        self.restart_at = None
        self.writing = False
        log.info("history reader: pid %d", pid)
        self.pump()  # what the last one left unanswered

    def pump(self) -> None:
        """Hand it what waits, and watch for writing only while requests wait to go out."""
        self.link.pump()
        chan = self.link.chan
        if chan is None or self.link.writing == self.writing:
            return
        self.writing = self.link.writing
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.writing else 0)
        self.sel.modify(chan, events, self.ready)

    def ready(self, chan: socket.socket, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self.link.flush()
        if mask & selectors.EVENT_READ:
            replies = self.link.receive()
            if replies is None:  # gone, or broke the rules: a new one takes over
                pid = self.link.pid
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.lost()
                return
            for reply in replies:
                self.broker.read_done(reply)
        self.pump()

    def lost(self) -> None:
        """The reader died or was ended: its reads go to the next one (reaped later)."""
        if self.link.chan is not None:
            self.sel.unregister(self.link.chan)
        if self.link.pid is not None:
            self.old.add(self.link.pid)  # to reap, and to log how it ended
        for failure in self.link.lost():
            self.broker.read_done(failure)
        if self.running:
            self.restart_at = max(time.monotonic(), self.link.started + reader.RESTART_PAUSE)

    def stop(self) -> None:
        """At shutdown: it exits when it sees its channel close."""
        self.running = False
        self.restart_at = None
        if self.link.chan is not None:
            self.sel.unregister(self.link.chan)
            self.link.close()

    def reaped(self, pid: int, status: int) -> bool:
        """Whether `pid` was one of ours (and is now forgotten)."""
        if pid == self.link.pid:
            self.lost()  # (before its channel's EOF said so)
        return reaped_helper(self.old, pid, status, self.running, "history reader")
