"""The IRC front end of one session: a translator between IRC lines and native frames.

An IRC session is a native session whose client speaks IRC. `IrcFrontEnd` sits between
the client's bytes and the native `Session` (see the package docstring for the wiring):

    client bytes ─▶ receive_data() ─▶ to_session (native requests) ─▶ Session.receive_data
                                  └─▶ to_client (lines it answers itself: CAP, MODE, ...)
    Session.to_client + broker RAW frames ─▶ receive_frames() ─▶ to_client (IRC lines)

Every native request it sends carries a label of its own (an int), so each reply finds the
IRC command it answers; the client's IRCv3 `label` tag never reaches the native side.
Replies go to the client in the order of the commands, whatever the order in which the
native side answers (a native `pong` overtakes; an IRC PONG must not): each command has a
`Reply` in a queue, and only the head of the queue is written out. An event (a frame that
answers no request: a message, someone joining) takes its place in that queue by when it
came: before the first reply still waiting for its first answer (so bob's message comes
before the echo of alice's later one, as the server ordered them), after those before it,
which had theirs (so a client never sees a message in a room before its own JOIN of it).
Replies answered here (a PONG to the server, a WHOIS) have no place in the server's
order: behind one still waiting, they go after the events that come meanwhile.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chatd import protocol as p
from chatd.config import Config
from chatd.irc import commands, render
from chatd.irc.lines import MAX_LINE, IrcError, Line, LineReader, parse, serialise
from chatd.ratelimit import TokenBucket

log = logging.getLogger("chatd.irc")
Frame = dict[str, Any]
# Commands whose answers are not all written yet; beyond it input waits unread. A client
# pasting into a room at once (one read of 16 KiB of short lines) stays below it.
MAX_REPLIES = 4096
# Input the front end holds while paused: a shell that keeps reading meanwhile is told
# the IRC way (ERROR :Closing link (Excess Flood)), like an ircd's full receive queue.
MAX_UNREAD = 1 << 16


@dataclass(slots=True, eq=False)
class Reply:
    """What one IRC command produces, in order; `waiting` counts native requests still
    unanswered, `started` says whether any answer came. `label` is the client's label
    tag (when labeled-response is on)."""

    command: str
    label: str | None = None
    lines: list[Line] = field(default_factory=list)
    waiting: int = 0
    started: bool = False


@dataclass(slots=True, eq=False)
class Pending:
    """A native request in flight. `on_frame` gets each frame answering it and returns
    True once the request is fully answered; `on_error` maps an `error` (which always
    ends it) to lines, else the default mapping is used with `target`."""

    label: int
    reply: Reply
    on_frame: Callable[[Frame], bool]
    target: str = "*"
    on_error: Callable[[Frame], list[Line]] | None = None


class IrcFrontEnd:
    def __init__(self, config: Config, now: float, tls: bool = False) -> None:
        self.server = render.host_name(config.server_name)
        self.tls = tls  # the client came over TLS (irc.tls_port): SASL PLAIN is offered
        self.account: str | None = None  # logged in with SASL (sasl.py)
        self.sasl: Any = None  # the SASL exchange in progress (sasl.Exchange)
        self.limits: dict[str, Any] = config.limits()
        self.motd = ""
        self.caps: set[str] = set()
        self.cap_302 = False
        self.negotiating = False  # CAP LS/REQ before registration: wait for CAP END
        self.want_nick: str | None = None
        self.user_given = False
        self.hello_pending = False
        self.nick: str | None = None  # set by welcome: registered
        self.rooms: dict[str, dict[str, str]] = {}  # joined room -> nick key -> spelling
        self.away: dict[str, str] = {}  # nick key -> away message, of those we know (away.py)
        # Rooms with a PART in flight, and how many: a JOIN right behind the PART (a
        # client's /cycle) is not one of "a room you are in", though `rooms` still says so.
        self.parting: dict[str, int] = {}
        self.to_session: list[bytes] = []
        self.to_client: list[bytes] = []
        self.ended = False
        self.multiline: Any = None  # an open client multiline batch (messaging.py)
        self.dropped_batch: str | None = None  # a batch replaced by another: lines dropped
        self.bucket = TokenBucket(float(self.limits["cmd_rate"]),
                                  int(self.limits["cmd_burst"]), now)
        self._reader = LineReader()
        self._held: Line | None = None  # a command waiting for the answers before it
        self._frames = p.FrameDecoder(1 << 24)  # trusted: the session's and broker's own
        self._labels = itertools.count(1)
        self._batches = itertools.count(1)
        self._pending: dict[int, Pending] = {}
        self._echo: dict[int, Pending] = {}  # message id -> the msg waiting for its echo
        self._replies: deque[Reply] = deque()
        self._last_event: tuple[Any, ...] | None = None

    # ---- from the client ----

    def receive_data(self, data: bytes, now: float) -> None:
        """Client bytes. Whatever it produces is in to_session and to_client; the caller
        feeds to_session to the Session even when it is empty (b"" is the client's sign
        of life for the keepalive)."""
        if self.ended:
            return
        self._reader.receive_data(data)
        self._read(now)
        if self._reader.buffered > MAX_UNREAD:  # the shell went on reading while paused
            self.send({"type": "quit", "reason": "excess flood"})
            self.close("Excess Flood")
        self._flush()

    def changing(self, commands: frozenset[str]) -> bool:
        """Whether one of `commands` waits for its answer (commands.must_wait)."""
        return any(r.waiting and r.command in commands for r in self._replies)

    @property
    def paused(self) -> bool:
        """MAX_REPLIES commands wait for their answers, or a command waits for those
        before it (commands.must_wait): the rest of the input waits in the line buffer
        (the shell should stop reading the client meanwhile)."""
        return self._full or self._held is not None

    @property
    def _full(self) -> bool:
        return len(self._replies) >= MAX_REPLIES

    def _read(self, now: float) -> None:
        if self._held is not None:  # a command that reads what earlier ones change
            if commands.must_wait(self, self._held):
                return
            line, self._held = self._held, None
            commands.dispatch(self, line, now)
            if self.ended or self.paused:
                return
        lines = self._reader.lines()
        try:
            for raw in lines:
                if isinstance(raw, bytes) and not raw.strip(b" "):
                    continue  # an empty line is ignored (RFC 1459 §2.3.1)
                try:
                    if isinstance(raw, IrcError):
                        raise raw
                    line = parse(raw)
                except IrcError as exc:
                    self._refuse(exc, now)
                else:
                    if commands.must_wait(self, line):
                        self._held = line  # the rest of the input waits behind it
                        break
                    commands.dispatch(self, line, now)
                if self.ended or self.paused:
                    break
        finally:
            lines.close()  # what was read is taken out of the buffer

    def _refuse(self, exc: IrcError, now: float) -> None:
        """A line that is not one: it costs a token like a bad native frame."""
        reply = self.begin(exc.command, exc.tags)
        if not self.charge(exc.command, now, reply):
            return
        if exc.code == "too_long":
            reply.lines.append(self.num("417", "Input line was too long"))
        else:
            reply.lines.append(self.fail(exc.command, exc.code.upper(), text=exc.message))

    # ---- from the session ----

    def receive_frames(self, data: bytes, now: float) -> None:
        """Native frames for the client (the Session's own and the broker's RAW ones).
        Feed what this puts in to_session to the Session too (only when there is some:
        it is not the client's sign of life)."""
        if self.ended:
            return
        self._frames.receive_data(data)
        for payload in self._frames.payloads():
            try:
                frame = p.decode_payload(payload)
            except p.ProtocolError:
                log.warning("undecodable frame from the server side")
                continue
            self._frame(frame)
            if self.ended:
                break
        self._flush()
        if self._full and not self.ended:
            return
        if (self._reader.buffered or self._held) and not self.ended:  # input waiting
            self._read(now)
            self._flush()

    def _frame(self, frame: Frame) -> None:
        if frame["type"] == "error" and frame.get("fatal"):
            self.close(render.line_text(frame.get("message") or frame.get("code")))
            return
        label = frame.get("label")
        pending = self._pending.get(label) if isinstance(label, int) else None
        if pending is None and frame["type"] in ("message", "moderation"):
            pending = self._echo.pop(frame.get("id", -1), None)  # what its ack announced
        if pending is None:
            if frame["type"] == "message":
                if self._replies and not self._replies[0].waiting:
                    # Answered commands ahead of it (an ack read with it, say) go out
                    # first, as receive_frames() would write them after this batch: same
                    # order, and the message may then take the per-delivery path.
                    self._flush()
                data = None if self._replies else render.message_line(self, frame)
                if data is not None:
                    self.to_client.append(data)
                    return
            for line in render.event(self, frame):
                self.event(line)
            return
        pending.reply.started = True
        if frame["type"] == "error":
            on_error = pending.on_error or (lambda f: render.error(self, f, pending.reply.command,
                                                                   pending.target))
            pending.reply.lines += on_error(frame)
            done = True
        else:
            if frame["type"] == "ack" and isinstance(frame.get("id"), int):
                self._echo[frame["id"]] = pending  # the message with this id comes next
            done = pending.on_frame(frame)
        if done:
            self._done(pending)

    def _done(self, pending: Pending) -> None:
        self._pending.pop(pending.label, None)
        pending.reply.waiting -= 1

    # ---- for the command handlers ----

    def begin(self, command: str, tags: dict[str, str] | None = None) -> Reply:
        """A new command's place in the reply order."""
        label = (tags or {}).get("label") if "labeled-response" in self.caps else None
        reply = Reply(command, label or None)
        self._replies.append(reply)
        return reply

    def request(self, reply: Reply, frame: Frame, on_frame: Callable[[Frame], bool],
                target: str = "*", on_error: Callable[[Frame], list[Line]] | None = None
                ) -> None:
        """Send a native request whose answers go to `on_frame` (see Pending)."""
        label = next(self._labels)
        frame["label"] = label
        self._pending[label] = Pending(label, reply, on_frame, target, on_error)
        reply.waiting += 1
        self.to_session.append(p.pack(frame))

    def send(self, frame: Frame) -> None:
        """A native request that gets no reply (pong, quit)."""
        self.to_session.append(p.pack(frame))

    def event(self, line: Line) -> None:
        """A line that answers no command: before the first reply still waiting for its
        first answer, else after them all (see the module docstring)."""
        replies = self._replies
        for i, reply in enumerate(replies):
            if reply.waiting and not reply.started:
                replies.insert(i, Reply("", lines=[line], started=True))
                return
        if replies:
            replies.append(Reply("", lines=[line], started=True))
        else:
            self._write(line)

    def once(self, key: tuple[Any, ...]) -> bool:
        """False for the same event again (a quit or nick comes once per shared room)."""
        if key == self._last_event:
            return False
        self._last_event = key
        return True

    def close(self, reason: str) -> None:
        """The session ends: what is answered goes out (what is not never will be), then
        ERROR, then nothing."""
        for reply in self._replies:
            if not reply.waiting:
                self._write_reply(reply)
        self._replies.clear()
        self._write(Line("ERROR", [f"Closing link: {self.server} ({reason})"]))
        self.ended = True

    def charge(self, command: str, now: float, reply: Reply | None = None,
               tags: dict[str, str] | None = None) -> bool:
        """A command answered here costs a token of a `cmd` bucket like the Session's, so
        local answers cannot be had faster than native ones. Over it: 263 RPL_TRYAGAIN
        (in `reply`, else in a new one)."""
        wait = self.bucket.take(now)
        if wait:
            reply = reply or self.begin(command, tags)
            reply.lines.append(self.num("263", command, f"over cmd_rate; retry in {wait:.2f}s"))
        return not wait

    def set_limits(self, limits: dict[str, Any]) -> None:
        self.limits = {**self.limits, **limits}
        self.bucket.reconfigure(float(self.limits["cmd_rate"]), int(self.limits["cmd_burst"]))

    # ---- building lines ----

    @property
    def me(self) -> str:
        return self.nick or "*"

    def num(self, code: str, *params: str) -> Line:
        return Line(code, [self.me, *params], self.server)

    def fail(self, command: str, code: str, *context: str, text: str) -> Line:
        return Line("FAIL", [command, code, *context, text], self.server)

    def mask(self, nick: str) -> str:
        return f"{nick}!~u@{self.server}"

    def new_batch(self) -> str:
        return str(next(self._batches))

    def has(self, cap: str) -> bool:
        return cap in self.caps

    # ---- writing ----

    def _flush(self) -> None:
        replies = self._replies
        while replies:
            head = replies[0]
            if head.waiting:
                if head.label is None:  # stream what it has; the rest follows
                    for line in head.lines:
                        self._write(line)
                    head.lines.clear()
                return
            replies.popleft()
            self._write_reply(head)

    def _write_reply(self, reply: Reply) -> None:
        for line in render.labelled(self, reply.label, reply.lines):
            self._write(line)

    def _write(self, line: Line) -> None:
        try:
            data = serialise(line)
        except ValueError:
            log.exception("unsendable IRC line %s", line.command)
            return
        if len(data) > MAX_LINE and line.params:
            data = render.fit(line, data)
        self.to_client.append(data)
