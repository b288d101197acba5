"""One client connection's state machine (sans-I/O; lives in the session process).

Fed client bytes, broker controls and the time (`now_ms`: a monotonic clock in integer
milliseconds; deadlines are on it too); produces frames for the
client (`to_client`), canonical requests for the broker (`to_broker`) and, when
the session must end, `ended` (the error code). It owns what is per-connection:
framing limits, schema checks, the handshake deadline, keepalive, rate limits.
Room and nick semantics belong to the broker.
"""

from __future__ import annotations

import enum
import itertools
import logging
from collections import deque
from typing import Any

from chatd import channel
from chatd import protocol as p
from chatd.channel import CATCHUP
from chatd.config import Config
from chatd.protocol import ProtocolError, pack
from chatd.ratelimit import TokenBucket

log = logging.getLogger("chatd.session")
FLOOD_PAUSE_MS = 10_000  # a rate-limit strike is forgotten after this long
# join/history replies can each be up to max_frame; with this many in flight at most, a
# reconnect that re-joins 50 busy rooms at once cannot flood its own queues (and be
# ended as a slow consumer for it). The broker answers each with a `done` control, which
# may come later than replies to requests sent after it (the history reader answers
# those reads): other requests wait here meanwhile, so replies keep the requests' order.
CATCHUP_WINDOW = 4
# Requests a client may have waiting behind unanswered catch-up requests. The wait lasts
# as long as the history reader takes; a client that piles up more than this is flooding.
MAX_HELD = 1024
BUCKET_OF = {"msg": "msg", "join": "history", "history": "history"}  # else: cmd
QUIT_REASONS = {
    "ping_timeout": "ping timeout", "handshake_timeout": "handshake timeout",
    "slow_consumer": "slow consumer", "flood": "flooding", "frame_too_large": "bad frame",
    "shutting_down": "server shutting down", "server_gone": "server gone",
    "resource_limit": "resource limit", "internal": "internal error",
}


def ms(seconds: float) -> int:
    """A duration setting (seconds, as configured) on the session's clock."""
    return round(seconds * 1000)


class State(enum.Enum):
    """Where a session is in its life; it only moves down this list (any -> CLOSING)."""

    AWAITING_HELLO = "awaiting hello"  # only hello, ping, pong and quit go on
    REGISTERING = "registering"  # a hello went to the broker: everything goes on
    WELCOMED = "welcomed"  # the broker welcomed a nick: a second hello is refused
    CLOSING = "closing"  # the end is decided (`ended` says why): last frames go out
    ENDED = "ended"  # the shell has delivered them and closed the connection


# What the session knows of its registration, for protocol.check_registration (None: not
# yet known, the broker decides). Requests of an ended session are never looked at.
REGISTERED: dict[State, bool | None] = {
    State.AWAITING_HELLO: False, State.REGISTERING: None, State.WELCOMED: True,
    State.CLOSING: None, State.ENDED: None,
}


class Session:
    def __init__(self, config: Config, now_ms: int) -> None:
        self.config = config
        self.decoder = p.FrameDecoder(config.max_frame)
        self.to_client: list[bytes] = []
        self.to_broker: list[bytes] = []
        self.state = State.AWAITING_HELLO
        self.nick: str | None = None
        self.ended: str | None = None  # why the session ends, from CLOSING on
        self.drop_pending = False  # the shell discards unsent client output
        self.last_rx = now_ms
        self.ping_deadline: int | None = None
        self.broker_deadline: int | None = None
        self._tokens = itertools.count(1)
        self.buckets = {
            "msg": TokenBucket(config.msg_rate, config.msg_burst, now_ms / 1000),
            "history": TokenBucket(config.history_rate, config.history_burst, now_ms / 1000),
            "cmd": TokenBucket(config.cmd_rate, config.cmd_burst, now_ms / 1000),
        }
        self.catchup_inflight = 0
        self.held: deque[tuple[str, bytes]] = deque()  # requests waiting, in order
        self.strikes = 0
        self.last_strike = 0
        self.handshake_deadline: int | None = now_ms + ms(config.handshake_timeout)

    # ---- input from the client ----

    def receive_data(self, data: bytes, now_ms: int) -> None:
        if self.ended:
            return
        self.last_rx = now_ms
        self.ping_deadline = None
        self.decoder.receive_data(data)
        try:
            for payload in self.decoder.payloads():
                self._frame(payload, now_ms)
                if self.ended:
                    return
        except ProtocolError as exc:  # only framing errors escape payloads()
            self.fail(exc.code, exc.message, limit=exc.limit)

    def client_closed(self) -> None:
        if not self.ended:
            self._end("closed", "connection closed")

    def _frame(self, payload: bytes, now_ms: int) -> None:
        """One frame costs one token at most: a request its own bucket's, a frame that is
        not a valid request one of `cmd` (protocol.md §7)."""
        try:
            req, label = p.parse_request(payload)
        except ProtocolError as exc:
            if self._allow("cmd", exc.label, now_ms):
                self.to_client.append(p.error_from(exc, exc.label))
            return
        rtype = req["type"]
        if rtype == "quit":  # always ends the session, whatever its fields or budget
            self._quit(req, label)
            return
        if rtype == "ping":
            self._send_pong(req, label)
            return
        if rtype == "pong":
            return
        if not self._allow(BUCKET_OF.get(rtype, "cmd"), label, now_ms):
            return
        try:
            p.check_registration(rtype, REGISTERED[self.state])
        except ProtocolError as exc:
            self.to_client.append(p.error_from(exc, label))
            return
        if self.state is State.AWAITING_HELLO and rtype == "hello":
            self._enter(State.REGISTERING)
        log.debug("request %s", rtype)
        self._forward(rtype, self._canonical(req, rtype, label))

    def _quit(self, req: dict[str, Any], label: Any) -> None:
        """Leave at once: what still waits is never answered. Only a `reason` goes on
        (parse_request kept it only if a string; the broker replaces one that breaks the
        rules with "quit")."""
        self.held.clear()
        self._close("quit")
        out: dict[str, Any] = {"type": "quit"}
        if "reason" in req:
            out["reason"] = req["reason"]
        if label is not None:
            out["label"] = label
        self.to_broker.append(pack(out))

    def _send_pong(self, req: dict[str, Any], label: Any) -> None:
        pong: dict[str, Any] = {"type": "pong"}
        if "token" in req:  # validated: str, int or bin
            pong["token"] = req["token"]
        if label is not None:
            pong["label"] = label
        self.to_client.append(pack(pong))

    def _forward(self, rtype: str, data: bytes) -> None:
        """To the broker, or wait (keeping order) while it may not go yet."""
        if not self.held and self._may_go(rtype):
            self._to_broker(rtype, data)
        elif len(self.held) >= MAX_HELD:
            self.fail("flood", f"over {MAX_HELD} requests waiting for earlier ones")
        else:
            self.held.append((rtype, data))

    def _may_go(self, rtype: str) -> bool:
        """Catch-up requests go up to CATCHUP_WINDOW at a time; others only when no
        catch-up request is unanswered (its reply may still be on its way)."""
        if rtype in CATCHUP:
            return self.catchup_inflight < CATCHUP_WINDOW
        return not self.catchup_inflight

    def _to_broker(self, rtype: str, data: bytes) -> None:
        if rtype in CATCHUP:
            self.catchup_inflight += 1
        self.to_broker.append(data)

    def _release(self) -> None:
        while self.held:
            rtype, data = self.held[0]
            if not self._may_go(rtype):
                return
            self.held.popleft()
            self._to_broker(rtype, data)

    @staticmethod
    def _canonical(req: dict[str, Any], rtype: str, label: Any) -> bytes:
        """Only known fields go on to the broker; nothing else from the client does."""
        out = {k: req[k] for k in p.SCHEMAS[rtype] if k in req}
        out["type"] = rtype
        if label is not None:
            out["label"] = label
        return pack(out)

    def _allow(self, bucket: str, label: Any, now_ms: int) -> bool:
        wait = self.buckets[bucket].take(now_ms / 1000)  # rates and waits are per second
        if not wait:
            return True
        if now_ms - self.last_strike > FLOOD_PAUSE_MS:
            self.strikes = 0
        self.strikes += 1
        self.last_strike = now_ms
        if self.strikes > self.config.flood_strikes:
            self.fail("flood", limit="flood_strikes")
        else:
            self.to_client.append(p.error_frame(
                "rate_limited", f"over {bucket}_rate; retry in {wait:.2f}s", label=label,
                limit=f"{bucket}_rate", retry_after=round(wait, 3)))
        return False

    # ---- input from the broker ----

    def control(self, ctrl: dict[str, Any]) -> None:
        kind = ctrl.get("c")
        if kind == channel.WELCOME:
            self.nick = ctrl.get("nick")
            self.handshake_deadline = None
            if not self.ended:
                self._enter(State.WELCOMED)
        elif kind == channel.CLOSE:
            code = ctrl.get("code", "internal")
            self.fail(code if code in p.ERRORS else "internal", ctrl.get("message", ""),
                      limit=ctrl.get("limit"), tell_broker=False)
        elif kind == channel.CONFIG:
            self.reconfigure(self.config.with_values(ctrl["values"]))
        elif kind == channel.DONE_KIND:
            self.catchup_inflight = max(0, self.catchup_inflight - 1)
            if not self.ended:
                self._release()

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self.decoder.max_frame = config.max_frame
        for name, bucket in self.buckets.items():
            bucket.reconfigure(getattr(config, f"{name}_rate"), getattr(config, f"{name}_burst"))

    def broker_lost(self, now_ms: int) -> None:
        """The parent vanished: wait `broker_grace` for it, then give up."""
        if self.broker_deadline is None:
            self.broker_deadline = now_ms + ms(self.config.broker_grace)

    def broker_back(self) -> None:
        """A new parent adopted us (chatd/orphan.py): what was in flight to the old one is
        gone with it, so nothing waits for its answers any more."""
        self.broker_deadline = None
        self.catchup_inflight = 0
        if not self.ended:
            self._release()

    # ---- time ----

    def next_deadline(self) -> float:
        """When tick() next has something to do, in ms (infinity once the session ended)."""
        if self.ended:
            return float("inf")
        # While a ping is outstanding its deadline replaces the next ping time.
        candidates = [self.last_rx + ms(self.config.ping_interval)
                      if self.ping_deadline is None else self.ping_deadline]
        for deadline in (self.handshake_deadline, self.broker_deadline):
            if deadline is not None:
                candidates.append(deadline)
        return min(candidates)

    def tick(self, now_ms: int) -> None:
        if self.ended:
            return
        if self.broker_deadline is not None and now_ms >= self.broker_deadline:
            self.fail("server_gone", tell_broker=False)
        elif self.handshake_deadline is not None and now_ms >= self.handshake_deadline:
            self.fail("handshake_timeout", limit="handshake_timeout")
        elif self.ping_deadline is not None and now_ms >= self.ping_deadline:
            self.fail("ping_timeout", limit="ping_timeout")
        elif self.ping_deadline is None and \
                now_ms >= self.last_rx + ms(self.config.ping_interval):
            self.to_client.append(pack({"type": "ping", "token": next(self._tokens)}))
            self.ping_deadline = now_ms + ms(self.config.ping_timeout)

    # ---- ending ----

    def fail(self, code: str, message: str = "", *, limit: str | None = None,
             tell_broker: bool = True) -> None:
        """End the session with a fatal error frame to the client."""
        if self.ended:  # one ending only: a fatal error is always the last frame
            return
        extra = {"limit": limit} if limit else {}
        if code == "slow_consumer":  # the client is behind: the error goes next, not last
            self.drop_pending = True
        self.to_client.append(p.error_frame(code, message, **extra))
        if tell_broker:
            self._end(code, QUIT_REASONS.get(code, code.replace("_", " ")))
        else:
            self._close(code)

    def _end(self, code: str, reason: str) -> None:
        self.to_broker.append(pack({"type": "quit", "reason": reason, "code": code}))
        self._close(code)

    def _close(self, code: str) -> None:
        self.ended = code
        self._enter(State.CLOSING)

    def finished(self) -> None:
        """The shell has delivered the last frames (or given up) and closed the socket."""
        self._enter(State.ENDED)

    def _enter(self, state: State) -> None:
        """The one place a session changes state, and logs it."""
        log.debug("%s -> %s%s", self.state.value, state.value,
                  f" ({self.ended})" if state is State.CLOSING else "")
        self.state = state
