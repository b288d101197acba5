"""Client state: buffers, bounded scrollback, unread counts, pending messages (no UI, no I/O)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from chatd.protocol import NICK_CHARS, nick_key, safe_text

from .clock import SYSTEM, Clock
from .lifecycle import ConnState

SERVER = "*server*"  # key of the buffer for messages that belong to no room
DEFAULT_SCROLLBACK = 5000


@dataclass
class Line:
    """One entry of a buffer. Messages carry their server id once acknowledged."""

    kind: str  # message | action | notice | info | error
    ts: float  # seconds since the epoch (server time for server events)
    text: str
    nick: str = ""
    id: int | None = None
    label: int | None = None
    state: str = "ok"  # ok | pending | failed
    mention: bool = False
    own: bool = False


@dataclass
class Buffer:
    """A room, a direct-message conversation or the server buffer."""

    key: str  # room name, nick_key(nick) for direct messages, or SERVER
    name: str  # shown name
    kind: str  # room | dm | server
    scrollback: int = DEFAULT_SCROLLBACK
    lines: list[Line] = field(default_factory=list)
    trimmed: int = 0  # lines dropped from the front: absolute index = trimmed + position
    ids: set[int] = field(default_factory=set)
    last_id: int = 0  # highest message id seen here (the catch-up point)
    unread: int = 0
    mentions: int = 0
    topic: str = ""
    members: dict[str, str] = field(default_factory=dict)  # nick_key -> nick
    joined: bool = False
    anchor: int | None = None  # absolute index of the bottom line shown; None = follow
    new_below: int = 0  # lines added while scrolled up
    context_fetched: bool = False

    def add(self, line: Line) -> bool:
        """Insert a line in id order; False (and nothing changes) for a duplicate id."""
        if line.id is not None:
            if line.id in self.ids:
                return False
            self.ids.add(line.id)
            self.last_id = max(self.last_id, line.id)
        pos = len(self.lines)
        if line.id is not None:
            # Late arrivals (catch-up pages, older history) go before newer messages,
            # and before our own pending ones, which have no id yet.
            while pos > 0 and _after(self.lines[pos - 1], line):
                pos -= 1
        self.lines.insert(pos, line)
        if self.anchor is not None:
            if self.trimmed + pos <= self.anchor:
                self.anchor += 1
            else:
                self.new_below += 1
        self._trim()
        return True

    def _trim(self) -> None:
        excess = len(self.lines) - self.scrollback
        if excess <= 0:
            return
        for old in self.lines[:excess]:
            if old.id is not None:
                self.ids.discard(old.id)
        del self.lines[:excess]
        self.trimmed += excess
        if self.anchor is not None and self.anchor < self.trimmed:
            self.anchor = self.trimmed

    def find_label(self, label: int) -> Line | None:
        for line in reversed(self.lines):
            if line.label == label and line.state == "pending":
                return line
        return None

    def acked(self, line: Line, msg_id: int, ts: float) -> None:
        """Our pending line got its id: move it to its place in id order."""
        pos = self.lines.index(line)
        del self.lines[pos]
        if self.anchor is not None and self.trimmed + pos <= self.anchor:
            self.anchor -= 1
        line.id, line.ts, line.state = msg_id, ts, "ok"
        self.add(line)  # a no-op if the message frame somehow came first

    def oldest_id(self) -> int | None:
        for line in self.lines:
            if line.id is not None:
                return line.id
        return None

    def message_count(self) -> int:
        return sum(1 for line in self.lines if line.id is not None)

    # Scrolling: the UI moves the anchor; new lines never move the view while scrolled.
    @property
    def end(self) -> int:
        """Absolute index one past the last line."""
        return self.trimmed + len(self.lines)

    def scroll_to(self, anchor: int | None) -> None:
        if anchor is None or anchor >= self.end - 1:
            self.anchor, self.new_below = None, 0
        else:
            self.anchor = max(self.trimmed, anchor)

    def bottom(self) -> int:
        """Absolute index of the bottom line on screen."""
        return self.end - 1 if self.anchor is None else self.anchor


def _after(prev: Line, new: Line) -> bool:
    """Should `new` be placed before `prev`?"""
    if prev.id is not None:
        return prev.id > new.id  # type: ignore[operator]
    return prev.state == "pending" or prev.ts > new.ts


class Model:
    """All buffers plus connection state for the status bar."""

    def __init__(self, nick: str, scrollback: int = DEFAULT_SCROLLBACK,
                 clock: Clock = SYSTEM) -> None:
        self.nick = nick
        self.clock = clock  # wall-clock time and zone for stamps and day lines
        self.scrollback = scrollback
        self.buffers: dict[str, Buffer] = {}
        self.current = SERVER
        self.conn_state = ConnState.CONNECTING  # the Connection's, for the status bar
        self.retry_at: float | None = None  # clock.monotonic() of the next attempt
        self.lag_ms: float | None = None
        self.alerts = 0  # bells not rung yet
        self.known_rooms: set[str] = set()
        self.listeners: list[Callable[[Buffer, Line], None]] = []
        self.buffer(SERVER, "server", "server")

    # Buffers
    def buffer(self, key: str, name: str | None = None, kind: str = "room") -> Buffer:
        buf = self.buffers.get(key)
        if buf is None:
            buf = Buffer(key, name or key, kind, self.scrollback)
            self.buffers[key] = buf
        return buf

    def room(self, room: str) -> Buffer:
        self.known_rooms.add(room)
        return self.buffer(room, room, "room")

    def dm(self, nick: str) -> Buffer:
        buf = self.buffer(nick_key(nick), nick, "dm")
        return buf

    def get(self, key: str) -> Buffer | None:
        return self.buffers.get(key)

    def rename_dm(self, old: str, new: str) -> Buffer | None:
        """Follow a peer's nick change: its DM buffer takes the new name in place.

        Left alone (None) when there is no such buffer, or the new nick has one already.
        """
        old_key, new_key = nick_key(old), nick_key(new)
        buf = self.buffers.get(old_key)
        if buf is None or buf.kind != "dm" or (new_key != old_key and new_key in self.buffers):
            return None
        buf.key, buf.name = new_key, new
        # Rebuild to keep the buffer's place (its Alt+N number).
        self.buffers = {(new_key if k == old_key else k): b for k, b in self.buffers.items()}
        if self.current == old_key:
            self.current = new_key
        return buf

    @property
    def cur(self) -> Buffer:
        return self.buffers[self.current]

    def order(self) -> list[Buffer]:
        """Buffers in Alt+N order: server first, then in the order they were opened."""
        return list(self.buffers.values())

    def switch(self, key: str) -> bool:
        buf = self.buffers.get(key)
        if buf is None:
            return False
        self.current = key
        buf.unread = buf.mentions = 0
        return True

    def switch_index(self, index: int) -> bool:
        order = self.order()
        return 0 <= index < len(order) and self.switch(order[index].key)

    def cycle(self, step: int) -> None:
        keys = [b.key for b in self.order()]
        pos = keys.index(self.current) if self.current in keys else 0
        self.switch(keys[(pos + step) % len(keys)])

    def find(self, target: str) -> Buffer | None:
        """A buffer by number (1-based), room name or nick."""
        if target.isdigit():
            order = self.order()
            n = int(target)
            return order[n - 1] if 1 <= n <= len(order) else None
        return self.buffers.get(target.lower()) or self.buffers.get(nick_key(target))

    def close(self, key: str) -> None:
        if key == SERVER or key not in self.buffers:
            return
        keys = list(self.buffers)
        pos = keys.index(key)
        del self.buffers[key]
        if self.current == key:
            keys.remove(key)
            self.switch(keys[max(0, pos - 1)])

    # Lines
    def add(self, buf: Buffer, line: Line, new: bool = True) -> bool:
        """Add a line; `new=False` (backlog shown on join, older history) marks mentions
        but neither counts it as unread nor rings the bell."""
        if not buf.add(line):
            return False
        if line.kind in ("message", "action") and not line.own:
            if buf.kind == "dm" or self.mentions_me(line.text):
                line.mention = True
                self.alerts += int(new)
            if buf.key != self.current and new:
                buf.unread += 1
                if line.mention:
                    buf.mentions += 1
        for listener in self.listeners:
            listener(buf, line)
        return True

    def note(self, buf: Buffer | None, text: str, kind: str = "info",
             ts: float | None = None) -> Line:
        """A local line (notice, info or error) in buf, default the current buffer."""
        line = Line(kind, ts if ts is not None else self.clock.now(), text)
        self.add(buf or self.cur, line)
        return line

    def updated(self, buf: Buffer, line: Line) -> None:
        """Tell listeners a line changed state (acknowledged or failed)."""
        for listener in self.listeners:
            listener(buf, line)

    def mentions_me(self, text: str) -> bool:
        """Does a word of `text` (a run of nick characters) name me? By nick_key, so a
        look-alike spelling of my nick is a mention too."""
        me = nick_key(self.nick)
        return any(nick_key(word) == me for word in _NICK_WORD.findall(text))

    def last_seen(self) -> dict[str, dict[str, int]]:
        """Catch-up points to persist: highest id per room and per direct-message peer."""
        rooms = {b.key: b.last_id for b in self.buffers.values() if b.kind == "room" and b.last_id}
        dms = {b.key: b.last_id for b in self.buffers.values() if b.kind == "dm" and b.last_id}
        return {"rooms": rooms, "dms": dms}

    def pending_lines(self) -> list[tuple[Buffer, Line]]:
        return [(b, line) for b in self.buffers.values() for line in b.lines
                if line.state == "pending"]


_NICK_WORD = re.compile(f"[{NICK_CHARS}]+")


# The screen must not depend on the server keeping the rules: text from it is shown by
# the same rule the server enforces (chatd.protocol.safe_text), so a hostile server cannot
# drive the terminal (escape sequences), reorder a line (bidi controls) or hide text.
def clean(text: str) -> str:
    """Message text safe to print: what the rule refuses becomes U+FFFD, a line separator
    a newline, and a tab four spaces."""
    return safe_text(text, multiline=True).replace("\t", "    ")


def clean_line(text: str) -> str:
    """A one-line field (nick, room, topic, reason) safe to print: as clean(), and a tab
    or newline becomes U+FFFD too."""
    return safe_text(text, multiline=False)
