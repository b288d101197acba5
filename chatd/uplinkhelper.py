"""The parent's end of the cluster uplink (chatd/uplink.py), supervised like the history
reader: started at start-up, started again (after RESTART_PAUSE) when it dies, and handed
again every write it had not answered (each carries its number, so Redis carries it out
once). The parent never blocks on it: what it cannot take now waits in an Outbox.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import selectors
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import msgpack

from chatd import channel, helperproc, outbox
from chatd.cluster import ClusterBroker
from chatd.config import Config
from chatd.routing import now_ms
from chatd.sessiontable import reaped_helper
from chatd.stores import HistoryStore

log = logging.getLogger("chatd.master")
RESTART_PAUSE = 1.0
STOP_FLUSH = 1.0  # seconds the parent, stopping, may block handing its last writes over
Handler = Callable[[dict[str, Any]], None]


class UplinkHelper:
    def __init__(self, config: Config, sel: selectors.BaseSelector, on_message: Handler,
                 cursor: Callable[[], tuple[str, int]]) -> None:
        self.config = config
        self.sel = sel
        self.on_message = on_message  # everything the uplink says, checked (ClusterBroker)
        self.cursor = cursor  # (stream cursor, newest message id) to start a new one at
        self.incarnation = secrets.token_hex(8)  # this parent's sessions in Redis
        self.chan: socket.socket | None = None
        self.pid: int | None = None
        self.started = 0.0
        self.out = outbox.Outbox()
        self.writing = False
        self.reader = channel.EnvelopeReader()
        self.unanswered: dict[int, dict[str, Any]] = {}  # write number -> write
        self.restart_at: float | None = 0.0
        self.old: set[int] = set()  # uplinks that are gone but not yet reaped
        self.running = True  # False once the parent stops: none is started again

    @property
    def pids(self) -> set[int]:
        """Its processes not yet reaped."""
        return self.old | ({self.pid} if self.pid is not None else set())

    def configure(self, config: Config) -> None:
        self.config = config

    def start(self) -> None:
        cfg = self.config
        cursor, last_id = self.cursor()
        try:
            # (a fresh interpreter: the parent never imports chatd.uplink, nor redis)
            pid, chan = helperproc.spawn("chatd.uplink", [
                cfg.redis_url, cfg.node, self.incarnation, str(cfg.data_dir),
                repr(cfg.cluster_lease), repr(cfg.write_timeout), str(cfg.stream_length),
                cursor, str(last_id), cfg.log_level])
        except OSError as exc:
            log.error("cannot start the cluster uplink: %s", exc)
            self.restart_at = time.monotonic() + RESTART_PAUSE
            return
        chan.setblocking(False)
        self.pid, self.chan, self.started = pid, chan, time.monotonic()
        self.reader = channel.EnvelopeReader()
        self.sel.register(chan, selectors.EVENT_READ, self.ready)
        self.writing = False
        self.restart_at = None
        log.info("cluster uplink: pid %d (node %s)", pid, cfg.node)
        for msg in self.unanswered.values():  # what the last one left unanswered
            self.out.add(channel.control(msg))
        self.flush()

    def send(self, msg: dict[str, Any]) -> None:
        if msg["c"] == "w":
            self.unanswered[msg["w"]] = msg
        if self.chan is not None:
            self.out.add(channel.control(msg))

    def flush(self) -> None:
        if self.chan is None:
            return
        try:
            self.out.send(self.chan)
        except OSError:
            self.out.clear()
        writing = bool(self.out.chunks)
        if writing != self.writing:
            self.writing = writing
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
            self.sel.modify(self.chan, events, self.ready)

    def ready(self, chan: socket.socket, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            data = outbox.recv(chan)
            if data == b"":
                self._end("its channel closed")
                return
            if data:
                try:
                    for _kind, body in self.reader.feed(data):
                        msg = channel.decode_control(body)
                        if msg.get("c") == "r":
                            self.unanswered.pop(msg.get("w"), None)  # type: ignore[arg-type]
                        self.on_message(msg)
                except (ValueError, msgpack.UnpackException) as exc:
                    self._end(f"it broke the channel's framing ({exc})")
                    return
        self.flush()

    def retire(self) -> None:
        """An upgrade: the uplink ends without leaving the cluster (no SIGTERM, no EOF:
        the next parent goes on with this incarnation and these writes, hand_over)."""
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self.running = False
        self.restart_at = None
        self.lost()

    def resume(self) -> None:
        """After retire() for an upgrade that did not happen: a new one at once."""
        self.running = True
        self.restart_at = time.monotonic()

    def restart(self, why: str) -> None:
        """The broker reads the stream again (from where its store has it): a new uplink."""
        if self.pid is not None:
            self._end(why)

    def _end(self, why: str) -> None:
        if self.pid is not None:
            log.warning("cluster uplink (pid %d): %s; starting another", self.pid, why)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self.lost()

    def lost(self) -> None:
        if self.chan is not None:
            self.sel.unregister(self.chan)
            self.chan.close()
        if self.pid is not None:
            self.old.add(self.pid)
        self.chan, self.pid = None, None
        self.out.clear()
        if self.running:
            self.on_message({"c": "down", "e": "the cluster uplink process ended"})
            self.restart_at = max(time.monotonic(), self.started + RESTART_PAUSE)

    def stop(self) -> None:
        """At shutdown: hand over what waits (the sessions' quits, for a second at most);
        it carries that out, leaves the cluster and exits when it sees its channel close."""
        self.running = False
        self.restart_at = None
        if self.chan is not None:
            self.sel.unregister(self.chan)
            with contextlib.suppress(OSError):
                self.chan.settimeout(STOP_FLUSH)
                for chunk in self.out.chunks:
                    self.chan.sendall(chunk)
            self.chan.close()
            self.chan = None

    def reaped(self, pid: int, status: int) -> bool:
        """Whether `pid` was one of ours (and is now forgotten)."""
        if pid == self.pid:
            self.lost()  # (before its channel's EOF said so)
        return reaped_helper(self.old, pid, status, self.running, "cluster uplink")


def hand_over(broker: ClusterBroker, helper: UplinkHelper) -> dict[str, Any]:
    """The cluster's part of an upgrade's snapshot (chatd/handover.py), once the uplink
    has retired: the next parent keeps this host's incarnation, so Redis and the other
    hosts see the same host go on, and sends again the writes not answered yet."""
    return {"inc": helper.incarnation, "writes": list(helper.unanswered.values()),
            **broker.hand_over()}


def take_over(broker: ClusterBroker, helper: UplinkHelper, state: dict[str, Any]) -> None:
    helper.incarnation = str(state["inc"])
    helper.unanswered = {int(w["w"]): w for w in state["writes"]}
    broker.take_over(state)


def join_cluster(config: Config, store: HistoryStore, sel: selectors.BaseSelector
                 ) -> tuple[ClusterBroker, UplinkHelper]:
    """A host with cluster.redis_url: the cluster's broker and its uplink, wired."""
    broker = ClusterBroker(store, config)
    helper = UplinkHelper(config, sel, lambda msg: broker.uplink_said(msg, now_ms()),
                          broker.resume_at)
    broker.uplink = helper.send
    broker.restart_uplink = helper.restart
    return broker, helper
