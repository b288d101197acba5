"""Routing: session channels in, the broker's deliveries out, slow sessions kicked.

The parent never parses a client byte: it reads canonical requests framed by its own
session code from each session's channel, feeds them to the Broker with the session's
number (who a request is *from* is the channel it came on), and writes what the broker
has committed to the channels without ever blocking.
"""

from __future__ import annotations

import logging
import selectors
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from chatd import channel
from chatd.broker import Broker
from chatd.config import Config
from chatd.helpers import HistoryReaderHelper
from chatd.outbox import Receiver
from chatd.protocol import ProtocolError
from chatd.session import QUIT_REASONS
from chatd.sessiontable import Child, SessionTable
from chatd.takeover import REASON

if TYPE_CHECKING:
    from chatd.authsupervise import AuthHelperSupervisor

log = logging.getLogger("chatd.master")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Router:
    def __init__(self, config: Config, sel: selectors.BaseSelector, broker: Broker,
                 table: SessionTable, reader: HistoryReaderHelper,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.sel = sel
        self.broker = broker
        self.table = table
        self.reader = reader
        self.clock = clock
        self.auth: AuthHelperSupervisor | None = None  # set by the parent
        self.receive = Receiver()

    def stop_time(self) -> float:
        """How long a process told to end may take: close_grace to hand its client the
        last frames, then stop_timeout, before it is killed."""
        return self.config.close_grace + self.config.stop_timeout

    def doom(self, pid: int) -> None:
        self.table.doom(pid, self.clock() + self.stop_time())

    def route(self) -> None:
        """Hand the broker's output to the session channels (drain() has committed it:
        stored before anyone hears of it).

        Kicking a slow session makes it leave its rooms, which queues quit notices for
        the others: route again until the broker has nothing more to say.
        """
        while True:
            auths = self.broker.logins.take()  # to the auth helper, with the addresses
            if auths and self.auth is not None:  # (a refusal is queued output: drained next)
                self.auth.submit(auths)
            outbox = self.broker.drain()
            # drain() has committed: a read handed over now sees every message accepted
            # before it, and the broker never hands out a write that is rolled back.
            reads = self.broker.take_reads()
            replaced = self.broker.take_replaced()
            if not outbox and not reads and not replaced:
                break
            for sid, by in replaced:
                self.taken_over(sid, by)
            for sid, read in reads:
                self.reader.link.submit(sid, read)
            limit = self.config.child_queue
            # A room's members get the same frames: encode each distinct queue once.
            encoded: dict[object, bytes] = {}
            for sid, items in outbox.items():
                kid = self.table.by_sid.get(sid)
                if kid is None or kid.closing:
                    continue
                try:  # a queue holding a control (a dict) is unhashable: encode it alone
                    key = items[0] if len(items) == 1 else tuple(items)
                    data = encoded.get(key)
                    if data is None:
                        data = encoded[key] = channel.encode_items(items)
                except TypeError:
                    data = channel.encode_items(items)
                    if any(map(channel.is_close, items)):
                        self.doom(kid.pid)  # the broker ended it (a bug in a request)
                out = kid.out
                try:
                    out.push(data, kid.chan)
                except OSError:  # the session process is gone; its channel's EOF cleans up
                    out.clear()
                    continue
                if out.chunks or kid.writing:  # (the usual case: all of it went at once)
                    self.watch(kid)
                # child_queue bounds what stays queued, not one delivery
                if out.size > limit:
                    self.kick(kid, "slow_consumer", "queue_limit", limit="child_queue")
                    self.flush(kid)
        self.reader.pump()

    def flush(self, kid: Child) -> None:
        try:
            kid.out.send(kid.chan)
        except OSError:  # the session process is gone; its channel's EOF cleans up
            kid.out.clear()
            return
        self.watch(kid)

    def watch(self, kid: Child) -> None:
        """Watch the channel for room to write while its outbox holds something."""
        writing = bool(kid.out.chunks)
        if writing != kid.writing:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
            self.sel.modify(kid.chan, events, kid.handler)
            kid.writing = writing

    def send_control(self, kid: Child, ctrl: dict[str, object]) -> None:
        kid.out.add(channel.control(ctrl))
        self.flush(kid)

    def kick(self, kid: Child, code: str, why: str, limit: str | None = None,
             message: str = "", reason: str = "") -> None:
        """Tell a session process to end with `code` (its client is told `message`, its
        rooms `reason`, when given); it gets nothing else from us."""
        log.warning("ending session %s (pid %d): %s", kid.token, kid.pid, why)
        self._detach(kid, reason or QUIT_REASONS.get(code, code.replace("_", " ")), code)
        kid.out.discard()
        kid.out.add(channel.control(channel.close(code, limit, message)))
        kid.closing = True
        self.doom(kid.pid)

    def taken_over(self, sid: int, by: str) -> None:
        """The broker gave session `sid`'s nick and rooms to session `by` (takeover.py):
        its process closes its connection with `taken_over`, or is killed at the deadline
        (a stopped process), and frees its slot either way. What was queued for it is
        dropped: the new session catches up on it."""
        kid = self.table.by_sid.get(sid)
        if kid is not None and not kid.closing:
            self.kick(kid, "taken_over", f"taken over by session {by}", message=REASON)
            self.flush(kid)

    def _detach(self, kid: Child, reason: str, code: str) -> None:
        if kid.attached:
            self.broker.detach(kid.sid, reason, now_ms(), code=code)
            self.reader.link.drop(kid.sid)
            kid.attached = False

    # ---- session channels ----

    def readable(self, kid: Child, mask: int) -> None:
        """The selector callback of a session's channel."""
        if kid.sid not in self.table.by_sid:
            return
        chan = kid.chan
        if mask & selectors.EVENT_WRITE:
            self.flush(kid)
        if not mask & selectors.EVENT_READ:
            return
        data = self.receive(chan)
        if data is None:
            return
        if not data:
            self.closed(kid, "connection lost")
            return
        kid.decoder.receive_data(data)
        self.take(kid)

    def take(self, kid: Child) -> None:
        """Hand the broker the requests whole in the session's decoder."""
        now = now_ms()
        try:
            for payload in kid.decoder.payloads():
                self.broker.receive(kid.sid, payload, now)
        except ProtocolError:
            # Only our own session code writes here: this is a bug or a compromise.
            log.error("session %s (pid %d) broke channel framing", kid.token, kid.pid)
            self.table.kill(kid.pid)

    def closed(self, kid: Child, reason: str) -> None:
        self.doom(kid.pid)  # nothing left for it to do but exit
        self._detach(kid, reason, "closed")
        if kid.sid in self.table.by_sid:
            self.sel.unregister(kid.chan)
            kid.chan.close()
            del self.table.by_sid[kid.sid]

    def attach(self, kid: Child) -> None:
        """A new session's channel: watch it, and tell the broker."""
        self.adopt(kid)
        self.broker.attach(kid.sid, kid.token, kid.tls)

    def adopt(self, kid: Child) -> None:
        """Watch a session's channel (the broker knows it already after an upgrade)."""
        kid.handler = lambda _chan, mask: self.readable(kid, mask)
        self.sel.register(kid.chan, selectors.EVENT_READ, kid.handler)
