"""The status bar: connection and lag, nick, the hotlist, the topic; fitted to the width.

The hotlist is what must never fall off the end: the current buffer, then every buffer
with activity, the most important first (a mention or a direct message, then messages,
then notices such as joins), then the quiet ones. When they do not all fit, the bar gives
up room in this order: the topic, the quiet buffers, long names (cut with "…"), the names
of buffers with only notices, then the names of all the others (their number and count
stay), and only then the least important entries, counted in a last "+N" entry (with "!"
when one of them holds a mention). Pure functions of the model and the width.
"""

from __future__ import annotations

from dataclasses import dataclass

from prompt_toolkit.utils import get_cwidth

from .buffer import HOT, LOW, MSG, Buffer
from .lifecycle import ConnState
from .model import Model
from .render import Fragments, fit
from .safetext import clean_line

STYLES = {HOT: "class:status.hot", MSG: "class:status.act", LOW: "class:status.low"}


def lag_text(lag_ms: float | None, waited_ms: float | None) -> str:
    """The lag as the status bar shows it. While a ping is unanswered, the time waited
    once it passes the last measured lag: the lag is at least that, and growing."""
    if waited_ms is not None and waited_ms > (lag_ms if lag_ms is not None else 1000.0):
        return f"lag {_duration(waited_ms)}…"
    return f"lag {_duration(lag_ms)}" if lag_ms is not None else ""


def _duration(ms: float) -> str:
    if ms < 1000:
        return f"{ms:.0f} ms"
    return f"{ms / 1000:.1f} s" if ms < 10000 else f"{ms / 1000:.0f} s"


def connection(m: Model) -> Fragments:
    if m.conn_state is ConnState.CONNECTED:
        waited = None
        if m.ping_since is not None:
            waited = max(0.0, (m.clock.monotonic() - m.ping_since) * 1000)
        lag = lag_text(m.lag_ms, waited)
        if m.degraded:  # connected, but the server cannot store what is sent
            return [("class:status.bad", "connected · not storing" + (" · " + lag if lag
                                                                     else ""))]
        return [("class:status.ok", "connected" + (" · " + lag if lag else ""))]
    if m.conn_state is ConnState.RECONNECTING and m.retry_at is not None:
        secs = max(0, round(m.retry_at - m.clock.monotonic()))
        return [("class:status.bad", f"reconnecting in {secs}s")]
    # the handshake is part of connecting, for the user
    word = "connecting" if m.conn_state is ConnState.HANDSHAKE else m.conn_state.value
    return [("class:status.bad", word + "…")]


@dataclass(frozen=True)
class Entry:
    number: int  # Alt+N
    name: str
    level: int  # model.NONE .. HOT
    unread: int
    mentions: int
    current: bool

    def text(self, cap: int | None) -> str:
        """`[3:#rust]`, `5:#ops(2)`, `7:bob(1!)`, `4:#a`; only the number when cap is 0."""
        name = "" if cap == 0 else ":" + (self.name if cap is None else fit(self.name, cap))
        if self.current:
            return f"[{self.number}{name}]"
        if self.unread:
            return f"{self.number}{name}({self.unread}{'!' if self.mentions else ''})"
        return f"{self.number}{name}"

    @property
    def style(self) -> str:
        if self.current:
            return "class:status.cur"
        return STYLES.get(self.level, "class:status.dim")


def entries(m: Model) -> list[Entry]:
    """Current, active by importance, then quiet, as the hotlist shows them."""
    number = {b.key: i + 1 for i, b in enumerate(m.order())}

    def entry(b: Buffer) -> Entry:
        return Entry(number[b.key], clean_line(b.name), b.activity, b.unread, b.mentions,
                     b.key == m.current)

    hot = m.hotlist()
    quiet = [b for b in m.order() if b.key != m.current and b not in hot]
    return [entry(m.cur), *(entry(b) for b in hot), *(entry(b) for b in quiet)]


# From the roomiest to the most compact: (name cap of the current buffer, name cap of the
# others by activity, quiet buffers shown). None: the whole name; 0: the number only.
STAGES: list[tuple[int | None, dict[int, int], bool]] = [
    (None, {HOT: 20, MSG: 20, LOW: 20}, True),
    (20, {HOT: 12, MSG: 12, LOW: 12}, True),
    (20, {HOT: 20, MSG: 20, LOW: 20}, False),
    (16, {HOT: 12, MSG: 12, LOW: 12}, False),
    (16, {HOT: 12, MSG: 12, LOW: 0}, False),
    (12, {HOT: 12, MSG: 8, LOW: 0}, False),
    (12, {HOT: 12, MSG: 0, LOW: 0}, False),
    (8, {HOT: 8, MSG: 0, LOW: 0}, False),
    (6, {HOT: 0, MSG: 0, LOW: 0}, False),
]
NUMBERS = STAGES[-1]


def hotlist(all_entries: list[Entry], room: int) -> Fragments:
    """The entries, as complete as `room` cells allow."""
    for stage in STAGES:
        frags = _render(all_entries, *stage)
        if _width(frags) <= room:
            return frags
    # Still too wide: keep the most important that fit, count the rest in "+N".
    shown = [e for e in all_entries if e.current or e.level]
    for keep in range(len(shown) - 1, 0, -1):
        rest = shown[keep:]
        more = f"+{len(rest)}" + ("!" if any(e.mentions for e in rest) else "")
        style = "class:status.hot" if "!" in more else "class:status.act"
        frags = _render(shown[:keep], *NUMBERS) + [(style, more), ("class:status", " ")]
        if _width(frags) <= room or keep == 1:
            return frags
    return _render(shown[:1], *NUMBERS)


def _render(entries: list[Entry], cur_cap: int | None, caps: dict[int, int],
            quiet: bool) -> Fragments:
    frags: Fragments = []
    for e in entries:
        if e.current or e.level or quiet:
            cap = cur_cap if e.current else caps.get(e.level, 20)
            frags += [(e.style, e.text(cap)), ("class:status", " ")]
    return frags


def _width(frags: Fragments) -> int:
    return sum(get_cwidth(t) for _, t in frags)


def status(m: Model, width: int, note: str | None = None) -> Fragments:
    """The whole bar for a terminal `width` cells wide. `note` (a question the UI asks)
    takes the place of the hotlist and topic."""
    # Logged in, the nick is the account's name: "(account)" says whose it is.
    who = fit(clean_line(m.nick), 20) + (" (account)" if m.account else "") \
        + (" (away)" if m.my_away else "")
    out: Fragments = [("class:status", " "), *connection(m), ("class:status", f" │ {who} │ ")]
    room = max(0, width - _width(out) - 1)
    if note is not None:
        return out + [("class:status.hot", fit(note, max(room, 1)))]
    out += hotlist(entries(m), room)
    room = width - _width(out) - 3
    tail = ""
    if m.cur.kind == "room" and not m.cur.joined:
        tail = "(not joined)"
    elif m.cur.kind == "room" and m.cur.topic:
        tail = clean_line(m.cur.topic)
    if tail and room >= 4:
        out.append(("class:status", "│ " + fit(tail, room)))
    return out
