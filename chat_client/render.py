"""Turning buffer lines into styled, wrapped screen rows (prompt_toolkit fragments).

Pure functions over the model, so the screen layout is unit-tested without a terminal.

Whatever the buffer's size, a redraw or a key visits O(screen) lines: a line's wrapped
rows are cached on the line (checked against the width and every field shown, so a changed
line is re-wrapped), and scrolling walks only the lines it scrolls past or that fill the
first screenful, never the buffer from its top.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator
from typing import Any

from prompt_toolkit.utils import get_cwidth

from chatd.protocol import nick_key

from .buffer import Buffer, Line
from .clock import Clock
from .links import continued, is_url, linkify
from .safetext import clean, clean_line

log = logging.getLogger(__name__)

Fragments = list[tuple[str, str]]  # one screen row: (style, text) pieces
NICK_WIDTH = 12
READ_MARKER = " new since you were away "
# A message longer than this (a server may send megabytes in one) shows its start and how
# much is left out: wrapping and keeping rows for it would cost the whole client.
MAX_SHOWN = 20000
WHEEL_ROWS = 3  # rows one mouse-wheel notch scrolls
PALETTE = ("ansired", "ansigreen", "ansiyellow", "ansiblue", "ansimagenta", "ansicyan",
           "ansibrightred", "ansibrightgreen", "ansibrightyellow", "ansibrightblue",
           "ansibrightmagenta", "ansibrightcyan")


def nick_style(nick: str) -> str:
    """A colour that depends only on the nick (case-insensitively): stable across runs."""
    return "fg:" + PALETTE[zlib.crc32(nick_key(nick).encode()) % len(PALETTE)]


def day_row(ts: float, width: int, clock: Clock) -> Fragments:
    label = f" {clock.day(ts)} "
    side = max(2, (width - get_cwidth(label)) // 2)
    return [("class:day", ("─" * side + label + "─" * side)[: max(width, 1)])]


def read_marker_row(width: int) -> Fragments:
    side = max(2, (width - get_cwidth(READ_MARKER)) // 2)
    return [("class:readmarker", ("─" * side + READ_MARKER + "─" * side)[: max(width, 1)])]


def fit(text: str, cells: int) -> str:
    """text cut to at most `cells` terminal cells, an ellipsis showing where."""
    if get_cwidth(text) <= cells:
        return text
    out, used = [], 0
    for ch in text:
        used += get_cwidth(ch)
        if used > cells - 1:
            break
        out.append(ch)
    return "".join(out) + "…"


def line_parts(line: Line, mine: str, clock: Clock) -> tuple[Fragments, Fragments]:
    """(prefix, body) of one line; continuation rows are indented by the prefix."""
    stamp = clock.hm(line.ts)
    text = line.text
    if len(text) > MAX_SHOWN:
        text = f"{text[:MAX_SHOWN]} […{len(text) - MAX_SHOWN} more characters not shown]"
    text = clean(text)
    nick = clean_line(line.nick)
    prefix: Fragments = [("class:time", stamp + " ")]
    body: Fragments
    if line.kind == "message":
        style = "class:mention" if line.mention else nick_style(nick)
        # A nick wider than the column is cut (the column stays straight); its colour
        # still tells nicks with the same start apart.
        shown = fit(nick, NICK_WIDTH)
        pad = " " * (NICK_WIDTH - get_cwidth(shown))
        prefix += [(style, pad + shown), ("class:sep", " │ ")]
        body = [("class:pending" if line.state == "pending" else "", text)]
    elif line.kind == "action":
        prefix += [("class:action", f"{'*':>{NICK_WIDTH}}"), ("class:sep", " │ ")]
        body = [(nick_style(nick) + " italic", nick), ("class:action", " " + text)]
    elif line.kind == "error":
        prefix += [("class:error", f"{'!!':>{NICK_WIDTH}}"), ("class:sep", " │ ")]
        body = [("class:error", text)]
    elif line.kind == "notice":
        prefix += [("class:notice", f"{'--':>{NICK_WIDTH}}"), ("class:sep", " │ ")]
        body = [("class:notice", text)]
    else:
        prefix += [("", " " * NICK_WIDTH), ("class:sep", " │ ")]
        body = [("class:info", text)]
    body = linkify(body)
    if line.state == "pending":
        body.append(("class:pending", "  (sending…)"))
    elif line.state == "failed":
        body.append(("class:error", "  ✗ not sent"))
    return prefix, body


def wrap(prefix: Fragments, body: Fragments, width: int) -> list[Fragments]:
    """Wrap at the screen width (by terminal cells), breaking at spaces where possible.

    Newlines in the body (multi-line messages) start new rows; all continuation rows are
    indented under the text. Linear in the text: characters are collected in a list and
    joined per fragment, not appended to a string one by one.
    """
    width = max(width, 8)
    indent = sum(get_cwidth(t) for _, t in prefix)
    if indent > width // 2:
        indent = 2
    rows: list[Fragments] = []
    cur: Fragments = list(prefix)
    used = sum(get_cwidth(t) for _, t in prefix)
    run: list[str] = []  # characters of the fragment being built, in `run_style`
    run_style = ""

    def flush() -> None:
        if run:
            if cur and cur[-1][0] == run_style:  # one fragment per style run, as a terminal needs
                cur[-1] = (run_style, cur[-1][1] + "".join(run))
            else:
                cur.append((run_style, "".join(run)))
            run.clear()

    def newline(pad: int = indent) -> None:
        nonlocal cur, used
        flush()
        rows.append(cur)
        cur, used = ([("", " " * pad)] if pad else []), pad

    def url(style: str, text: str) -> None:
        """A URL is never broken where a row break can avoid it: it goes whole to the
        next row, or, when wider than the text column, starts a row of its own without
        the indent and goes on over whole rows (so a terminal's selection gets it all)."""
        nonlocal run_style, used, cur
        w = sum(get_cwidth(c) for c in text)
        if used + w > width:
            if w <= width - indent:
                newline()
            elif rows and cur == [("", " " * indent)]:  # an empty continuation row
                cur, used = [], 0
            elif used:
                newline(0)
        for ch in text:
            cw = get_cwidth(ch)
            if used + cw > width:
                newline(0)
                run_style = continued(style)
            run.append(ch)
            used += cw

    for style, text in body:
        flush()
        run_style = style
        if is_url(style):
            url(style, text)
            continue
        for word in _words(text):
            if word == "\n":
                newline()
                continue
            w = sum(get_cwidth(c) for c in word)
            if used + w > width and used > indent:
                if word.isspace():  # break here; no spaces at the start of a row
                    newline()
                    continue
                if w <= width - indent:
                    newline()
            if used + w <= width:  # the common case: the word fits as it is
                run.append(word)
                used += w
                continue
            for ch in word:
                cw = get_cwidth(ch)
                if used + cw > width:
                    newline()
                run.append(ch)
                used += cw
    flush()
    rows.append(cur)
    return rows


def _words(text: str) -> Iterator[str]:
    """Split into words, runs of spaces and newlines, keeping everything."""
    word = ""
    for ch in text:
        if ch == "\n" or (ch == " ") != (word[-1:] == " ") and word:
            if word:
                yield word
            word = ""
            if ch == "\n":
                yield "\n"
                continue
        word += ch
    if word:
        yield word


class _Cached:
    """What the renderer keeps on a line (`Line.cache`) between redraws."""

    __slots__ = ("rows_key", "rows", "day_key", "day")

    def __init__(self) -> None:
        self.rows_key: Any = None
        self.rows: list[Fragments] = []
        self.day_key: Any = None
        self.day = ""


def _cached(line: Line) -> _Cached:
    if not isinstance(line.cache, _Cached):
        line.cache = _Cached()
    return line.cache


def line_rows(line: Line, width: int, mine: str, clock: Clock) -> list[Fragments]:
    """The wrapped rows of one line (without its day row), cached on the line.

    A line that cannot be rendered (whatever is wrong with it) becomes a one-row
    placeholder: one bad line never takes its buffer's view down with it.
    """
    cache = _cached(line)
    # Everything line_parts shows. Strings are compared by identity first, so an unchanged
    # line costs one tuple comparison.
    key = (width, clock, line.kind, line.ts, line.text, line.nick, line.state, line.mention)
    try:
        if cache.rows_key == key:
            return cache.rows
        rows = wrap(*line_parts(line, mine, clock), width)
    except Exception as exc:
        log.debug("cannot render line %r", line, exc_info=True)
        rows = [[("class:error", f"[this line cannot be shown: {type(exc).__name__}]"
                                 [: max(width, 1)])]]
    cache.rows_key, cache.rows = key, rows
    return rows


def line_day(line: Line, clock: Clock) -> str:
    """The day label of a line's time, cached; "" if it has none that can be shown."""
    cache = _cached(line)
    key = (clock, line.ts)
    try:
        if cache.day_key != key:
            cache.day = clock.day(line.ts)
    except Exception:
        log.debug("no day for line %r", line, exc_info=True)
        cache.day = ""
    cache.day_key = key
    return cache.day


def rows_for(buf: Buffer, index: int, width: int, mine: str, clock: Clock) -> list[Fragments]:
    """Screen rows for the line at absolute index, with what stands around it: the read
    marker above or below it, a day-change row above it. O(log n): no walk."""
    pos = index - buf.trimmed
    line = buf.lines[pos]
    rows = line_rows(line, width, mine, clock)
    if line is buf.found:  # a search's hit: a copy, the cached rows stay as they are
        rows = [[(f"{style} class:found", text) for style, text in row] for row in rows]
    day = line_day(line, clock)
    # The top line is compared with today: a buffer that starts on another day says so.
    before = line_day(buf.lines[pos - 1], clock) if pos > 0 else clock.today()
    above = [read_marker_row(width)] if buf.marker_above(line) else []
    if day and before != day:
        above.append(day_row(line.ts, width, clock))
    if buf.marker_below(line):
        return [*above, *rows, read_marker_row(width)]
    return [*above, *rows] if above else rows


def visible_rows(buf: Buffer, width: int, height: int, mine: str,
                 clock: Clock) -> list[Fragments]:
    """The rows shown: ending at the buffer's bottom line, plus a marker when scrolled."""
    if height <= 0:
        return []
    marker: Fragments | None = None
    if buf.anchor is not None:
        below = buf.end - 1 - buf.anchor
        text = f" ▼ {buf.new_below} new below" if buf.new_below else " ▼ more below"
        marker = [("class:marker", f"{text} ({below} lines, PageDown) ".ljust(width))]
        height -= 1
    chunks: list[list[Fragments]] = []  # line by line, bottom up
    count = 0
    index = buf.bottom()
    while index >= buf.trimmed and count < height:
        chunks.append(rows_for(buf, index, width, mine, clock))
        count += len(chunks[-1])
        index -= 1
    rows = [row for chunk in reversed(chunks) for row in chunk]
    below_index = buf.bottom() + 1
    while len(rows) < height and below_index < buf.end:  # scrolled to the very top
        rows += rows_for(buf, below_index, width, mine, clock)
        below_index += 1
    rows = rows[-height:] if len(rows) > height and below_index == buf.bottom() + 1 \
        else rows[:height]
    if marker is not None:
        rows.append(marker)
    return rows


def top_bottom(buf: Buffer, width: int, height: int, mine: str, clock: Clock) -> int:
    """The bottom line's index when the view starts at the buffer's first line: the last
    line that fits whole under it (at least the first line). O(screen)."""
    room = max(1, height - 1)  # a scrolled view gives one row to the marker
    index, used = buf.trimmed, 0
    while index < buf.end:
        used += len(rows_for(buf, index, width, mine, clock))
        if used > room:
            break
        index += 1
    return max(buf.trimmed, index - 1)


def scroll_by(buf: Buffer, width: int, height: int, mine: str, rows: int,
              clock: Clock) -> int:
    """Absolute index of the bottom line after scrolling about `rows` rows up (< 0) or
    down (> 0), at least one line. Walks only the lines it passes: O(rows + screen)."""
    index = buf.bottom()
    moved = 0
    if rows < 0:
        while index > buf.trimmed and moved < -rows:
            moved += len(rows_for(buf, index, width, mine, clock))
            index -= 1
        # Near the top, stop at the first screenful, so the screen is full and the bottom
        # line shown is whole (and the "below" count is right).
        return max(index, top_bottom(buf, width, height, mine, clock))
    while index < buf.end - 1 and moved < rows:
        index += 1
        moved += len(rows_for(buf, index, width, mine, clock))
    return index


def page_rows(height: int) -> int:
    """Rows one PageUp/PageDown moves: a screen, less two rows kept for context."""
    return max(1, height - 2)


def scroll_target(buf: Buffer, width: int, height: int, mine: str, pages: int,
                  clock: Clock) -> int:
    """Absolute index of the bottom line one page up (pages < 0) or down (pages > 0)."""
    return scroll_by(buf, width, height, mine, pages * page_rows(height), clock)
