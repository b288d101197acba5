"""Commands that act on the client's own state and send nothing: /ignore, /unignore,
/whois, /clear, /search (sans-I/O, like Core, which calls `execute`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from chatd.protocol import nick_key

from . import commands as cmd
from .buffer import Buffer
from .model import Model
from .safetext import clean_line

if TYPE_CHECKING:
    from .core import Core


def execute(core: Core, action: cmd.Action) -> None:
    m = core.model
    match action:
        case cmd.Ignore(None):
            names = sorted(m.ignored.values(), key=str.lower)
            m.note(None, "ignored: " + ", ".join(names) if names else "nobody is ignored")
        case cmd.Ignore(str(nick)):
            if nick_key(nick) == nick_key(m.nick):
                core.local_error("you cannot ignore yourself")
            else:
                m.ignored[nick_key(nick)] = nick
                m.note(None, f"ignoring {nick}: their messages are not shown (a nick, not "
                       "a person: under another nick they are not ignored); /unignore "
                       f"{nick} to undo")
        case cmd.Unignore(nick):
            if m.ignored.pop(nick_key(nick), None) is None:
                core.local_error(f"{nick} is not ignored")
            else:
                m.note(None, f"no longer ignoring {nick}")
        case cmd.Whois(nick):
            for text in whois(m, nick):
                m.note(None, text)
        case cmd.Clear():
            m.cur.clear()
        case cmd.Search(text):
            search(core, m.cur, text)


def whois(m: Model, nick: str) -> list[str]:
    """What the client knows of a nick. The server has no whois: the member lists of the
    rooms we are in (kept current by join, part, quit and nick events) are all there is."""
    key = nick_key(nick)
    rooms = [b for b in m.order() if b.kind == "room" and b.joined and key in b.members]
    spelled = rooms[0].members[key] if rooms else nick
    if key == nick_key(m.nick):
        lines = [f"{clean_line(m.nick)} is you"]
    elif rooms:
        lines = [f"{clean_line(spelled)} is online, in "
                 + ", ".join(clean_line(b.name) for b in rooms)]
    else:
        lines = [f"{clean_line(nick)} is in none of your rooms (the server tells nothing "
                 "more: whether they are online shows only when you /msg them)"]
    away = m.my_away if key == nick_key(m.nick) else m.away.get(key)
    if away:
        lines.append(f"  away: {clean_line(away)}")
    if key in m.buffers and m.buffers[key].kind == "dm":
        number = list(m.buffers).index(key) + 1
        lines.append(f"  direct messages: buffer {number}")
    if key in m.ignored:
        lines.append("  ignored (/unignore to see their messages)")
    return lines


def find_back(buf: Buffer, text: str, before: int) -> int | None:
    """Absolute index of the newest line before `before` whose text or nick contains
    `text`, in any case. A search walks the buffer: O(lines passed), on request only."""
    needle = text.casefold()
    pos = min(before - buf.trimmed, len(buf.lines)) - 1
    while pos >= 0:
        line = buf.lines[pos]
        if needle in line.text.casefold() or needle in line.nick.casefold():
            return buf.trimmed + pos
        pos -= 1
    return None


def search(core: Core, buf: Buffer, text: str | None) -> bool:
    """/search: show the newest match on screen or above it, or above the last match of the same
    text; the view stays there, the line highlighted. None ends the search."""
    if text is None:
        buf.found = core.model.search_text = None
        return True
    start = buf.bottom() + 1
    where = "on screen or above " if buf.anchor is not None else ""
    if buf.found is not None and core.model.search_text == text:
        where = "above the last match "
        try:
            start = buf.index_of(buf.found) + buf.trimmed
        except ValueError:  # the last match has left the scrollback
            start = buf.end
    hit = find_back(buf, text, start)
    if hit is None:
        core.local_error(f"no line {where}contains {text!r}")
        return False
    buf.found, core.model.search_text = buf.lines[hit - buf.trimmed], text
    buf.scroll_to(hit)
    return True
