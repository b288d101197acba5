"""URLs in messages: found, kept whole by the wrapper, and made clickable (OSC 8).

The renderer marks a URL's text with the style class `url` (its first row) and `url.more`
(the rows it continues on when it is wider than the screen), so the wrapper never breaks
one at a row end it could avoid, and the links on screen can be found again from the rows.

OSC 8 hyperlinks are not written as prompt_toolkit "[ZeroWidthEscape]" fragments: those are
written only when the screen cell they sit on is redrawn, so a partial redraw could open a
link and never close it, and everything the terminal printed next would be part of it.
Instead `overlay()` builds one self-contained write, done after each redraw: save the
cursor, and for each piece of a link on screen move there, open the link, print the same
characters in the same style, close the link; then restore the cursor. Every link is
closed in the same write that opens it. The URL itself is only printable ASCII without
quotes or angle brackets (URL_RE), so server text can never end the escape sequence early
or inject another one.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .render import Fragments  # (render imports this module)

URL_CLASS = "class:url"
MORE_CLASS = "class:url.more"
# Printable ASCII except space, '"', '<', '>', '\\': nothing that can end or start an
# escape sequence, and the characters that usually delimit a URL in text.
URL_RE = re.compile(r"\bhttps?://[!#-;=?-\[\]-~]+")
TRAILING = ".,;:!?'*"  # punctuation that ends a sentence, not the URL
CLOSERS = {")": "(", "]": "[", "}": "{"}


def find_urls(text: str) -> list[tuple[int, int]]:
    """(start, end) of each URL in text, without the punctuation that follows it."""
    spans = []
    for match in URL_RE.finditer(text):
        start, end = match.span()
        while end > start:
            last = text[end - 1]
            opener = CLOSERS.get(last)
            if last in TRAILING or (opener is not None
                                    and text.count(opener, start, end) < text.count(
                                        last, start, end)):
                end -= 1  # "(see https://x.org/a)": the ')' is the sentence's
            else:
                break
        if end - start > len("https://"):
            spans.append((start, end))
    return spans


def linkify(body: Fragments) -> Fragments:
    """The body with each URL a fragment of its own, styled URL_CLASS. Unchanged (the
    same list) when there is none, which is almost always."""
    out: Fragments | None = None
    for i, (style, text) in enumerate(body):
        spans = find_urls(text) if "://" in text else []
        if not spans:
            if out is not None:
                out.append((style, text))
            continue
        if out is None:
            out = list(body[:i])
        pos = 0
        for start, end in spans:
            if start > pos:
                out.append((style, text[pos:start]))
            out.append((f"{style} {URL_CLASS}".strip(), text[start:end]))
            pos = end
        if pos < len(text):
            out.append((style, text[pos:]))
    return body if out is None else out


def is_url(style: str) -> bool:
    return URL_CLASS in style.split()


def continued(style: str) -> str:
    """The style of a URL's continuation rows."""
    return " ".join(MORE_CLASS if c == URL_CLASS else c for c in style.split())


@dataclass
class Piece:
    """Part of a link on screen: row y, column x (0-based cells), its text and style."""

    y: int
    x: int
    text: str
    style: str


def links_on_screen(rows: list[Fragments],
                    width_of: Callable[[str], int]) -> list[tuple[str, list[Piece]]]:
    """(url, pieces) for every link in the rows (a pane's rows, top to bottom). A URL
    wrapped over several rows is one link of several pieces."""
    links: list[tuple[str, list[Piece]]] = []
    for y, row in enumerate(rows):
        x = 0
        for style, text in row:
            classes = style.split()
            if URL_CLASS in classes:
                links.append((text, [Piece(y, x, text, style)]))
            elif MORE_CLASS in classes and links:
                url, pieces = links[-1]
                links[-1] = (url + text, [*pieces, Piece(y, x, text, style)])
            x += width_of(text)
    return links


Op = tuple[str, str]  # ("raw", escape sequence) | ("style", style string) | ("text", text)


def overlay(links: list[tuple[str, list[Piece]]], top: int, left: int) -> list[Op]:
    """What to write after a redraw to make the links clickable (see the module's
    docstring): escape sequences, the pieces' styles as the screen shows them, their text.
    `top` and `left` place the pane on the screen."""
    if not links:
        return []
    ops: list[Op] = [("raw", "\x1b7")]  # DECSC: save the cursor and attributes
    for url, pieces in links:
        if not URL_RE.fullmatch(url):  # never happens; never print what was not checked
            continue
        ident = f"{zlib.crc32(url.encode()):08x}"  # one id: the pieces hover as one link
        for p in pieces:
            ops += [("raw", f"\x1b[{top + p.y + 1};{left + p.x + 1}H"), ("style", p.style),
                    ("raw", f"\x1b]8;id={ident};{url}\x1b\\"), ("text", p.text),
                    ("raw", "\x1b]8;;\x1b\\")]
    ops.append(("raw", "\x1b[0m\x1b8"))  # DECRC: the cursor and attributes as they were
    return ops


def terminal_has_hyperlinks(env: Mapping[str, str]) -> bool:
    """Does the terminal (as its environment tells) show OSC 8 hyperlinks? There is no
    way to ask it, so only terminals known to support them say yes; inside tmux only
    tmux 3.4 and later pass them on, and inside screen nothing does."""
    if env.get("STY"):
        return False
    program = env.get("TERM_PROGRAM", "")
    if env.get("TMUX"):
        return program == "tmux" and _version(env.get("TERM_PROGRAM_VERSION", "")) >= (3, 4)
    if program in ("iTerm.app", "WezTerm", "vscode", "ghostty", "Hyper", "Tabby", "rio"):
        return True
    if env.get("KITTY_WINDOW_ID") or env.get("WT_SESSION") or env.get("ALACRITTY_WINDOW_ID"):
        return True
    if env.get("TERM", "") in ("xterm-kitty", "foot", "foot-extra", "wezterm", "xterm-ghostty"):
        return True
    if _version(env.get("VTE_VERSION", "")) >= (5000,):  # GNOME Terminal, Tilix, ...
        return True
    return _version(env.get("KONSOLE_VERSION", "")) >= (200400,)


def _version(text: str) -> tuple[int, ...]:
    parts = re.findall(r"\d+", text)
    return tuple(int(p) for p in parts[:3]) if parts else (0,)
