"""Client state: the buffers, which one is current, unread counts, mentions and the
hotlist, read markers across restarts, the connection's state for the status bar (no UI,
no I/O). A buffer's own lines and their order are in buffer.py."""

from __future__ import annotations

import re
from collections.abc import Callable

from chatd.protocol import NICK_CHARS, nick_key

from .buffer import DEFAULT_SCROLLBACK, HOT, LOW, MSG, NONE, SERVER, Buffer, Line
from .clock import SYSTEM, Clock
from .lifecycle import ConnState


class Model:
    """All buffers plus connection state for the status bar."""

    def __init__(self, nick: str, scrollback: int = DEFAULT_SCROLLBACK,
                 clock: Clock = SYSTEM) -> None:
        self.nick = nick
        self.account: str | None = None  # the account we are logged in to (status bar)
        self.clock = clock  # wall-clock time and zone for stamps and day lines
        self.scrollback = scrollback
        self.buffers: dict[str, Buffer] = {}
        self.current = SERVER
        self.conn_state = ConnState.CONNECTING  # the Connection's, for the status bar
        self.retry_at: float | None = None  # clock.monotonic() of the next attempt
        self.lag_ms: float | None = None
        self.degraded = False  # the server said it cannot store messages now (`status`)
        self.alerts = 0  # bells not rung yet
        self.known_rooms: set[str] = set()
        self.listeners: list[Callable[[Buffer, Line], None]] = []
        self.ping_since: float | None = None  # clock.monotonic() of a ping not answered yet
        self.ignored: dict[str, str] = {}  # nick_key -> the nick as given to /ignore
        self.highlight: re.Pattern[str] | None = None  # words that count as a mention
        self.read_points: dict[str, int] = {}  # saved read markers of buffers not open yet
        self.jumped_from: str | None = None  # where Alt+A started, to return to at the end
        self.search_text: str | None = None  # what /search looked for last
        self.my_away = ""  # your away message as the server has it ("": here)
        self.away: dict[str, str] = {}  # nick_key -> away message of others (presence.py)
        self.buffer(SERVER, "server", "server")

    # Buffers
    def buffer(self, key: str, name: str | None = None, kind: str = "room") -> Buffer:
        buf = self.buffers.get(key)
        if buf is None:
            buf = Buffer(key, name or key, kind, self.scrollback)
            buf.read_id = self.read_points.pop(buf.saved_key, None)
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

    # Read markers across restarts, by Buffer.saved_key
    def restore_reads(self, points: dict[str, int]) -> None:
        self.read_points = dict(points)
        for buf in self.buffers.values():
            if buf.saved_key in self.read_points:
                buf.read_id = self.read_points.pop(buf.saved_key)

    def saved_reads(self) -> dict[str, int]:
        out = dict(self.read_points)  # buffers not reopened this time keep theirs
        for buf in self.buffers.values():
            point = buf.saved_read(buf.key == self.current) if buf.kind != "server" else None
            if point is not None:
                out[buf.saved_key] = point
        return out

    def pending_lines(self) -> list[tuple[Buffer, Line]]:
        return [(b, line) for b in self.buffers.values() for line in b.lines
                if line.state == "pending"]


_NICK_WORD = re.compile(f"[{NICK_CHARS}]+")
