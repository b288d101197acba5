"""A buffer's lines and their order, its scrolling and its read marker (no UI, no I/O).

Lines are kept sorted by a `seq` each holds, so a line is found, and a place for a new one,
by bisection: any arrival order costs O(log n) per line plus one list insert.
"""

from __future__ import annotations

import contextlib
import math
from bisect import bisect_left, bisect_right
from collections.abc import KeysView
from dataclasses import dataclass, field
from typing import Any

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
    def saved_key(self) -> str:
        """How the files kept across restarts (read markers, logs) name this buffer:
        `#room`, or `@` and the peer's nick key."""
        return self.key if self.kind != "dm" else "@" + self.key

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
