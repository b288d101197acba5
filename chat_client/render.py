"""Turning buffer lines into styled, wrapped screen rows (prompt_toolkit fragments).

Pure functions over the model, so the screen layout is unit-tested without a terminal.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

from prompt_toolkit.utils import get_cwidth

from chatd.protocol import nick_key

from .clock import Clock
from .model import Buffer, Line, clean, clean_line

Fragments = list[tuple[str, str]]
NICK_WIDTH = 12
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


def line_parts(line: Line, mine: str, clock: Clock) -> tuple[Fragments, Fragments]:
    """(prefix, body) of one line; continuation rows are indented by the prefix."""
    stamp = clock.hm(line.ts)
    text = clean(line.text)
    nick = clean_line(line.nick)
    prefix: Fragments = [("class:time", stamp + " ")]
    body: Fragments
    if line.kind == "message":
        style = "class:mention" if line.mention else nick_style(nick)
        prefix += [(style, f"{nick:>{NICK_WIDTH}}"), ("class:sep", " │ ")]
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
    if line.state == "pending":
        body.append(("class:pending", "  (sending…)"))
    elif line.state == "failed":
        body.append(("class:error", "  ✗ not sent"))
    return prefix, body


def wrap(prefix: Fragments, body: Fragments, width: int) -> list[Fragments]:
    """Wrap at the screen width (by terminal cells), breaking at spaces where possible.

    Newlines in the body (multi-line messages) start new rows; all continuation rows are
    indented under the text.
    """
    width = max(width, 8)
    indent = sum(get_cwidth(t) for _, t in prefix)
    if indent > width // 2:
        indent = 2
    rows: list[Fragments] = []
    cur: Fragments = list(prefix)
    used = sum(get_cwidth(t) for _, t in prefix)

    def newline() -> None:
        nonlocal cur, used
        rows.append(cur)
        cur, used = [("", " " * indent)], indent

    for style, text in body:
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
            for ch in word:
                cw = get_cwidth(ch)
                if used + cw > width:
                    newline()
                if cur and cur[-1][0] == style:
                    cur[-1] = (style, cur[-1][1] + ch)
                else:
                    cur.append((style, ch))
                used += cw
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


def rows_for(buf: Buffer, index: int, width: int, mine: str, clock: Clock) -> list[Fragments]:
    """Screen rows for the line at absolute index, including a day-change row above it."""
    pos = index - buf.trimmed
    line = buf.lines[pos]
    rows = wrap(*line_parts(line, mine, clock), width)
    # The top line is compared with today: a buffer that starts on another day says so.
    before = clock.day(buf.lines[pos - 1].ts) if pos > 0 else clock.today()
    if before != clock.day(line.ts):
        rows.insert(0, day_row(line.ts, width, clock))
    return rows


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
    rows: list[Fragments] = []
    index = buf.bottom()
    while index >= buf.trimmed and len(rows) < height:
        rows[:0] = rows_for(buf, index, width, mine, clock)
        index -= 1
    below_index = buf.bottom() + 1
    while len(rows) < height and below_index < buf.end:  # scrolled to the very top
        rows += rows_for(buf, below_index, width, mine, clock)
        below_index += 1
    rows = rows[-height:] if len(rows) > height and below_index == buf.bottom() + 1 \
        else rows[:height]
    if marker is not None:
        rows.append(marker)
    return rows


def scroll_target(buf: Buffer, width: int, height: int, mine: str, pages: int,
                  clock: Clock) -> int:
    """Absolute index of the bottom line one page up (pages < 0) or down (pages > 0)."""
    step = max(1, height - 2)
    index = buf.bottom()
    rows = 0
    if pages < 0:
        while index > buf.trimmed and rows < step:
            rows += len(rows_for(buf, index, width, mine, clock))
            index -= 1
        # Near the top, stop where the first screenful ends, so the bottom line shown is
        # whole and the "below" count is right.
        above = sum(len(rows_for(buf, i, width, mine, clock))
                    for i in range(buf.trimmed, index + 1))
        while above < height - 1 and index < buf.end - 1:
            index += 1
            above += len(rows_for(buf, index, width, mine, clock))
        if above > height - 1 and index > buf.trimmed and index < buf.bottom():
            index -= 1  # that line would not fit whole
        return index
    while index < buf.end - 1 and rows < step:
        index += 1
        rows += len(rows_for(buf, index, width, mine, clock))
    return index
