"""Client state: buffers, bounded scrollback, unread counts, pending messages (no UI, no I/O)."""

from __future__ import annotations

import contextlib
import math
import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, KeysView
from dataclasses import dataclass, field
from typing import Any

from chatd.protocol import NICK_CHARS, nick_key, safe_text

from .clock import SYSTEM, Clock
from .lifecycle import ConnState

SERVER = "*server*"  # key of the buffer for messages that belong to no room
DEFAULT_SCROLLBACK = 5000
# Activity of a buffer that is not the current one, for the hotlist (most important last).
NONE, LOW, MSG, HOT = 0, 1, 2, 3  # nothing; notices; messages; a mention or a direct message


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
    backlog: bool = False  # replayed from history rather than received live
    # Kept by the Buffer that holds the line: its lines are sorted by `seq`, so a line is
    # found (and a place for a new one) by bisection, not by a walk over the buffer.
    seq: int = field(default=0, repr=False, compare=False)
    # The renderer's wrapped rows of this line (chat_client.render), checked against the
    # line's fields and the width on each use, so a changed line is simply re-wrapped.
    cache: Any = field(default=None, repr=False, compare=False)


# Room between the seq of neighbouring lines. A line inserted between two others takes the
# midpoint, so 64 insertions at one place fit before the lines around it are spread out
# again (see Buffer._make_room). Python ints: no precision runs out.
GAP = 1 << 64
MIN_ROOM = 1 << 16  # a spread-out window leaves at least this much between its lines


@dataclass
class Buffer:
    """A room, a direct-message conversation or the server buffer.

    Lines are kept in this order: messages with an id in id order; lines without one
    (notices, local lines) where they were added, which is at the end, except that our own
    messages waiting for their ack stay below everything else; a message that arrives late
    (catch-up, older history) goes after the message with the next lower id, and among the
    id-less lines that follow that one by time. Adding a line costs O(log n) plus one list
    insert (a memmove), whatever the arrival order: a history page in descending id order
    must not cost O(n) per message.
    """

    key: str  # room name, nick_key(nick) for direct messages, or SERVER
    name: str  # shown name
    kind: str  # room | dm | server
    scrollback: int = DEFAULT_SCROLLBACK
    lines: list[Line] = field(default_factory=list)
    trimmed: int = 0  # lines dropped from the front: absolute index = trimmed + position
    last_id: int = 0  # highest message id seen here (the catch-up point)
    unread: int = 0
    mentions: int = 0
    topic: str = ""
    members: dict[str, str] = field(default_factory=dict)  # nick_key -> nick
    joined: bool = False
    anchor: int | None = None  # absolute index of the bottom line shown; None = follow
    new_below: int = 0  # lines added while scrolled up
    context_fetched: bool = False
    activity: int = NONE  # what happened here since it was last the current buffer
    # The read marker ("new since you were away"). Leaving a buffer puts it below the last
    # line (`read_line`); after a restart only `read_id` is known, the last message read,
    # and the marker stands above the first newer message. Both None: no marker.
    read_line: Line | None = field(default=None, repr=False)
    read_id: int | None = None
    found: Line | None = field(default=None, repr=False)  # what a search found, highlighted
    # The lines with an id: by id, and their ids sorted (always the same set).
    by_id: dict[int, Line] = field(default_factory=dict, repr=False)
    id_order: list[int] = field(default_factory=list, repr=False)

    @property
    def ids(self) -> KeysView[int]:
        """Ids of the messages held (the dedup set; shrinks with the scrollback)."""
        return self.by_id.keys()

    def add(self, line: Line) -> bool:
        """Insert a line in its place; False (and nothing changes) for a duplicate id."""
        if line.id is not None:
            if line.id in self.by_id:
                return False
            rank = bisect_left(self.id_order, line.id)
            pos = self._place(line, rank)
            self.id_order.insert(rank, line.id)
            self.by_id[line.id] = line
            self.last_id = max(self.last_id, line.id)
        elif line.state == "pending":
            pos = len(self.lines)
        else:
            pos = self._unsent()
        self._insert(pos, line)
        if self.anchor is not None:
            if self.trimmed + pos <= self.anchor:
                self.anchor += 1
            else:
                self.new_below += 1
        self._trim()
        return True

    def _place(self, line: Line, rank: int) -> int:
        """Position for a message whose id would be id_order[rank]."""
        lo = self.index_of(self.by_id[self.id_order[rank - 1]]) + 1 if rank else 0
        if rank < len(self.id_order):
            hi = self.index_of(self.by_id[self.id_order[rank]])
        else:
            hi = self._unsent()
        # lines[lo:hi] have no id: place the message among them by time.
        return bisect_right(self.lines, _time_key(line), lo, hi, key=_time_key)

    def _unsent(self) -> int:
        """Where our messages waiting for their ack begin: they stay at the bottom, below
        anything that arrives meanwhile. O(messages in flight)."""
        pos = len(self.lines)
        while pos > 0 and self.lines[pos - 1].state == "pending":
            pos -= 1
        return pos

    def _insert(self, pos: int, line: Line) -> None:
        lines = self.lines
        if 0 < pos < len(lines) and lines[pos].seq - lines[pos - 1].seq < 2:
            self._make_room(pos)
        before = lines[pos - 1].seq if pos > 0 else None
        after = lines[pos].seq if pos < len(lines) else None
        if before is None:
            line.seq = 0 if after is None else after - GAP
        else:
            line.seq = before + GAP if after is None else (before + after) // 2
        lines.insert(pos, line)

    def _make_room(self, pos: int) -> None:
        """Spread out the lines around a used-up gap before lines[pos].

        The window doubles until it reaches an end of the buffer (where the seqs may grow
        freely) or holds room enough for MIN_ROOM per line; only its lines are renumbered.
        So a page inserted at one place costs a window of a few dozen lines every few
        dozen messages, not a pass over the buffer.
        """
        lines, n = self.lines, len(self.lines)
        k = 1
        while True:
            lo, hi = max(0, pos - k), min(n, pos + k)
            slots = hi - lo + 1  # the window's lines and the one to come at pos
            if lo == 0 and hi == n:
                first, step = 0, GAP
            elif lo == 0:
                first, step = lines[hi].seq - slots * GAP, GAP
            elif hi == n:
                first, step = lines[lo - 1].seq + GAP, GAP
            else:
                left, right = lines[lo - 1].seq, lines[hi].seq
                step = (right - left) // (slots + 1)
                first = left + step
                if step < MIN_ROOM:
                    k *= 2
                    continue
            break
        slot = 0
        for j in range(lo, hi):
            if j == pos:
                slot += 1  # left free for the new line
            lines[j].seq = first + slot * step
            slot += 1

    def index_of(self, line: Line) -> int:
        """Position of a line held by this buffer, by bisection (ValueError if absent)."""
        pos = bisect_left(self.lines, line.seq, key=_seq)
        if pos < len(self.lines) and self.lines[pos] is line:
            return pos
        raise ValueError("line not in this buffer")

    def _trim(self) -> None:
        excess = len(self.lines) - self.scrollback
        if excess <= 0:
            return
        dropped = 0
        for old in self.lines[:excess]:
            if old.id is not None:
                del self.by_id[old.id]
                dropped += 1
        # Messages are in id order, so the ones dropped from the front have the lowest ids.
        del self.id_order[:dropped]
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
        """Our pending line got its id: move it to its place in id order. When it is the
        bottom line shown, the view goes with it."""
        pos = self.index_of(line)
        shown_at_bottom, below = self.anchor == self.trimmed + pos, self.new_below
        del self.lines[pos]
        if self.anchor is not None and self.trimmed + pos <= self.anchor:
            self.anchor -= 1
        line.id, line.ts, line.state = msg_id, ts, "ok"
        self.add(line)  # a no-op if the message frame somehow came first
        if shown_at_bottom and self.anchor is not None:
            with contextlib.suppress(ValueError):  # (a duplicate id, or trimmed: gone)
                self.anchor, self.new_below = self.trimmed + self.index_of(line), below

    def oldest_id(self) -> int | None:
        return self.id_order[0] if self.id_order else None

    def message_count(self) -> int:
        return len(self.id_order)

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

    # The read marker; the renderer asks both questions of each line it draws: O(log n).
    def marker_below(self, line: Line) -> bool:
        return line is self.read_line and line is not self.lines[-1]

    def marker_above(self, line: Line) -> bool:
        if self.read_line is not None or self.read_id is None or line.id is None:
            return False
        rank = bisect_right(self.id_order, self.read_id)
        return rank < len(self.id_order) and self.id_order[rank] == line.id

    def leave(self) -> None:
        """The user leaves this buffer: everything in it is read."""
        self.read_line = self.lines[-1] if self.lines else None
        self.read_id = self.last_id

    def enter(self) -> None:
        """The user comes to this buffer: with nothing new, no marker while they watch.
        A marker restored after a restart stays while the buffer is still empty: what was
        missed meanwhile is on its way."""
        if self.read_line is not None:
            if self.read_line is self.lines[-1]:
                self.read_line = self.read_id = None
        elif self.read_id is not None and self.id_order and self.id_order[-1] <= self.read_id:
            self.read_id = None

    def saved_read(self, current: bool) -> int | None:
        """The read point to keep across a restart: the current buffer is read; one never
        looked at has none."""
        return (self.last_id or None) if current else self.read_id

    def clear(self) -> None:
        """Forget the lines shown (/clear), except ours still waiting for an ack. The
        catch-up point stays: nothing comes back on the next reconnect."""
        keep = [line for line in self.lines if line.state == "pending"]
        self.trimmed += len(self.lines) - len(keep)
        self.lines = keep
        self.by_id.clear()
        self.id_order.clear()
        self.anchor, self.new_below = None, 0
        self.read_line = self.found = None
        self.read_id = None


def _seq(line: Line) -> int:
    return line.seq


def _time_key(line: Line) -> float:
    """Where a line sorts among id-less lines: by time.

    Whatever a server sends as a time, this is a float that compares (a NaN or a
    non-number sorts first), so a bad timestamp can misplace its own line, nothing more.
    """
    try:
        ts = float(line.ts)
    except (TypeError, ValueError, OverflowError):
        return -math.inf
    return -math.inf if ts != ts else ts


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
        self.ping_since: float | None = None  # clock.monotonic() of a ping not answered yet
        self.ignored: dict[str, str] = {}  # nick_key -> the nick as given to /ignore
        self.highlight: re.Pattern[str] | None = None  # words that count as a mention
        self.read_points: dict[str, int] = {}  # saved read markers of buffers not open yet
        self.jumped_from: str | None = None  # where Alt+A started, to return to at the end
        self.search_text: str | None = None  # what /search looked for last
        self.buffer(SERVER, "server", "server")

    # Buffers
    def buffer(self, key: str, name: str | None = None, kind: str = "room") -> Buffer:
        buf = self.buffers.get(key)
        if buf is None:
            buf = Buffer(key, name or key, kind, self.scrollback)
            buf.read_id = self.read_points.pop(read_key(buf), None)
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
        old = self.buffers.get(self.current)  # None when the current one was just closed
        if old is not buf:
            if old is not None:
                old.leave()
            buf.enter()
        self.current = key
        buf.unread = buf.mentions = 0
        buf.activity = NONE
        return True

    def hotlist(self) -> list[Buffer]:
        """Buffers with activity, the most important first (then by number)."""
        active = [(-b.activity, i, b) for i, b in enumerate(self.order())
                  if b.activity and b.key != self.current]
        return [b for _, _, b in sorted(active, key=lambda t: t[:2])]

    def jump_active(self) -> bool:
        """Alt+A: to the most important buffer with activity; when none is left, back to
        where the jumps started."""
        hot = self.hotlist()
        if hot:
            if self.jumped_from is None:
                self.jumped_from = self.current
            return self.switch(hot[0].key)
        back, self.jumped_from = self.jumped_from, None
        return back is not None and back != self.current and self.switch(back)

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
        found = self.buffers.get(target.lower()) or self.buffers.get(nick_key(target))
        if found is None:  # a shown name ("server")
            found = next((b for b in self.order() if b.name.lower() == target.lower()), None)
        return found

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
        said = line.kind in ("message", "action") and not line.own
        if said and nick_key(line.nick) in self.ignored:
            return self._ignore(buf, line)
        if not buf.add(line):
            return False
        level = LOW
        if said:
            level = MSG
            if buf.kind == "dm" or self.mentions_me(line.text):
                line.mention, level = True, HOT
                self.alerts += int(new)
            if buf.key != self.current and new:
                buf.unread += 1
                if line.mention:
                    buf.mentions += 1
        elif line.kind == "error":
            level = MSG
        if buf.key != self.current and new and not line.own:
            buf.activity = max(buf.activity, level)
        for listener in self.listeners:
            listener(buf, line)
        return True

    def note(self, buf: Buffer | None, text: str, kind: str = "info",
             ts: float | None = None, activity: bool = True) -> Line:
        """A local line (notice, info or error) in buf, default the current buffer.
        `activity=False`: about what we did ourselves (joined, left, got a nick, lost the
        connection), which is no news for the hotlist."""
        line = Line(kind, ts if ts is not None else self.clock.now(), text)
        self.add(buf or self.cur, line, new=activity)
        return line

    def updated(self, buf: Buffer, line: Line) -> None:
        """Tell listeners a line changed state (acknowledged or failed)."""
        for listener in self.listeners:
            listener(buf, line)

    def _ignore(self, buf: Buffer, line: Line) -> bool:
        """Drop a message from an ignored nick. Its id still counts as seen, and a direct
        message buffer it alone would have opened is not left behind."""
        if isinstance(line.id, int):
            buf.last_id = max(buf.last_id, line.id)
        if buf.kind == "dm" and not buf.lines and buf.key != self.current:
            del self.buffers[buf.key]
        return False

    def mentions_me(self, text: str) -> bool:
        """Does a word of `text` (a run of nick characters) name me, or is a highlight word
        in it? By nick_key, so a look-alike spelling of my nick is a mention too."""
        me = nick_key(self.nick)
        if any(nick_key(word) == me for word in _NICK_WORD.findall(text)):
            return True
        return self.highlight is not None and self.highlight.search(text) is not None

    def set_highlights(self, words: list[str]) -> None:
        """Words that count as a mention besides my nick: whole words, any case."""
        words = [w for w in words if w.strip()]
        self.highlight = re.compile(
            r"(?<!\w)(?:" + "|".join(re.escape(w) for w in words) + r")(?!\w)",
            re.IGNORECASE) if words else None

    # Read markers across restarts, by read_key()
    def restore_reads(self, points: dict[str, int]) -> None:
        self.read_points = dict(points)
        for buf in self.buffers.values():
            if read_key(buf) in self.read_points:
                buf.read_id = self.read_points.pop(read_key(buf))

    def saved_reads(self) -> dict[str, int]:
        out = dict(self.read_points)  # buffers not reopened this time keep theirs
        for buf in self.buffers.values():
            point = buf.saved_read(buf.key == self.current) if buf.kind != "server" else None
            if point is not None:
                out[read_key(buf)] = point
        return out

    def pending_lines(self) -> list[tuple[Buffer, Line]]:
        return [(b, line) for b in self.buffers.values() for line in b.lines
                if line.state == "pending"]


_NICK_WORD = re.compile(f"[{NICK_CHARS}]+")


def read_key(buf: Buffer) -> str:
    """A buffer's name in the saved read markers: `#room`, or `@` and the peer's nick key."""
    return buf.key if buf.kind != "dm" else "@" + buf.key


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
