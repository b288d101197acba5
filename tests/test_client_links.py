"""URLs shown whole and clickable (OSC 8), never a way in for escape sequences; long nicks."""

from __future__ import annotations

import io
import re
import threading
from datetime import UTC, datetime

import pytest
from fakechatd import FakeChatd, message
from prompt_toolkit.data_structures import Size
from prompt_toolkit.output.vt100 import Vt100_Output
from prompt_toolkit.utils import get_cwidth
from tuirunner import TUI

from chat_client.buffer import Line
from chat_client.clock import Clock
from chat_client.links import (
    find_urls,
    linkify,
    links_on_screen,
    overlay,
    terminal_has_hyperlinks,
)
from chat_client.render import NICK_WIDTH, line_parts, wrap
from chat_client.tui import UIOptions

NOW = datetime(2026, 11, 21, 15, 0, tzinfo=UTC).timestamp()
CLOCK = Clock(now=lambda: NOW, zone=UTC)
OSC8 = re.compile(r"\x1b\]8;([^;\x1b\x07]*);([^\x1b\x07]*)\x1b\\")


def rows_of(text: str, width: int, nick: str = "bob") -> list[list[tuple[str, str]]]:
    return wrap(*line_parts(Line("message", NOW, text, nick=nick, id=1), "me", CLOCK), width)


def plain(rows: list[list[tuple[str, str]]]) -> list[str]:
    return ["".join(t for _, t in row) for row in rows]


@pytest.mark.parametrize(
    ("text", "urls"),
    [
        ("see https://example.org/a?b=c&d=e#f.", ["https://example.org/a?b=c&d=e#f"]),
        ("(https://example.org/x)", ["https://example.org/x"]),
        ("https://en.wikipedia.org/wiki/Python_(language), yes",
         ["https://en.wikipedia.org/wiki/Python_(language)"]),
        ("<http://a.example/p> and 'https://b.example/q'",
         ["http://a.example/p", "https://b.example/q"]),
        ("no scheme: example.org, ftp://x.org, https://", []),
        ("https://xn--bcher-kva.example/Bücher", ["https://xn--bcher-kva.example/B"]),
        ("two: https://a.org/1 https://b.org/2!", ["https://a.org/1", "https://b.org/2"]),
    ],
)
def test_urls_are_found_without_the_punctuation_around_them(text: str,
                                                             urls: list[str]) -> None:
    assert [text[a:b] for a, b in find_urls(text)] == urls


def test_text_without_urls_is_left_as_it_was() -> None:
    body = [("", "nothing here"), ("class:pending", "  (sending…)")]
    assert linkify(body) is body


def test_a_url_that_fits_the_text_column_is_never_broken() -> None:
    url = "https://example.org/" + "p" * 40
    for width in range(60, 100, 3):
        rows = rows_of("look at this one " * 2 + url + " please", width)
        pieces = [t for row in rows for s, t in row if "class:url" in s.split()]
        assert pieces == [url], width  # whole, on one row
        assert not any("class:url.more" in s for row in rows for s, _ in row)


def test_a_url_wider_than_the_screen_starts_its_own_row_and_fills_whole_rows() -> None:
    url = "https://example.org/" + "x" * 150
    rows = rows_of(f"start {url} end", 60)
    text = plain(rows)
    assert text[0].endswith("│ start ")
    first = next(i for i, row in enumerate(rows) if any("class:url" in s for s, _ in row))
    assert text[first].startswith("https://")  # no indent: a terminal selects it whole
    url_rows = text[first:first + 3]
    assert [len(r) for r in url_rows[:2]] == [60, 60]
    assert "".join(url_rows)[: len(url)] == url
    links = links_on_screen(rows, get_cwidth)
    assert [u for u, _ in links] == [url] and len(links[0][1]) == 3


def test_long_nicks_are_cut_to_the_column_so_the_text_stays_aligned() -> None:
    rows = [plain(rows_of("hi", 80, nick))[0] for nick in
            ("bob", "exactly12chr", "a_very_long_nick_of_30_chars__")]
    assert len({row.index("│") for row in rows}) == 1
    assert rows[2].split("│")[0].strip().endswith("…")
    assert len(rows[2].split(" │ ")[0]) == len("15:00 ") + NICK_WIDTH


def test_the_overlay_opens_and_closes_each_link_in_one_write() -> None:
    rows = rows_of("a https://a.org/1 and https://b.org/" + "y" * 120, 50)
    ops = overlay(links_on_screen(rows, get_cwidth), 2, 0)
    raw = "".join(v if k != "style" else "" for k, v in ops)
    assert raw.startswith("\x1b7") and raw.endswith("\x1b8")
    opens = [m for m in OSC8.finditer(raw) if m.group(2)]
    closes = [m for m in OSC8.finditer(raw) if not m.group(2)]
    assert len(opens) == len(closes) == 1 + 3  # one piece, then one link over three rows
    assert {m.group(2) for m in opens} == {"https://a.org/1", "https://b.org/" + "y" * 120}
    ids = {m.group(1) for m in opens if "b.org" in m.group(2)}
    assert len(ids) == 1  # the pieces of one link share an id
    assert raw.count("\x1b]8;") == len(opens) + len(closes)


def test_terminal_support_is_only_assumed_where_known() -> None:
    assert not terminal_has_hyperlinks({})
    assert not terminal_has_hyperlinks({"TERM": "xterm-256color"})
    assert terminal_has_hyperlinks({"TERM_PROGRAM": "iTerm.app"})
    assert terminal_has_hyperlinks({"VTE_VERSION": "7200"})
    assert not terminal_has_hyperlinks({"VTE_VERSION": "4800"})
    assert terminal_has_hyperlinks({"TERM": "xterm-kitty"})
    assert not terminal_has_hyperlinks({"TMUX": "/tmp/x", "TERM_PROGRAM": "iTerm.app"})
    assert terminal_has_hyperlinks({"TMUX": "/tmp/x", "TERM_PROGRAM": "tmux",
                                    "TERM_PROGRAM_VERSION": "3.4"})
    assert not terminal_has_hyperlinks({"STY": "1.pts", "TERM_PROGRAM": "WezTerm"})


HOSTILE = [
    "plain https://good.example/ok and more",
    # An escape to end the link early and open another, a BEL, C1 controls: all inert.
    "https://evil.example/\x1b]8;;https://phish.example\x1b\\click\x07\x9b2J",
    "https://evil.example/\u202eexe.txt",
]


class Terminal(io.StringIO):
    """What the client writes to its terminal, kept for the test (thread-safe)."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.chunks: list[str] = []

    def write(self, s: str) -> int:
        with self.lock:
            self.chunks.append(s)
        return len(s)

    def text(self) -> str:
        with self.lock:
            return "".join(self.chunks)


def test_the_real_client_links_urls_and_server_text_injects_nothing() -> None:
    history = [message(i + 1, text, room="#a") for i, text in enumerate(HOSTILE)]
    server = FakeChatd(lambda room: history)
    term = Terminal()
    output = Vt100_Output(term, lambda: Size(rows=24, columns=100), term="xterm-256color")
    try:
        client = TUI(server.host, server.port, "alice", ["#a"], clock=CLOCK, output=output,
                     options=UIOptions(hyperlinks=True))
        try:  # the links are written by the redraw that shows them
            client.wait(lambda: "evil.example" in term.text(), "the links drawn")
        finally:
            client.close()
    finally:
        server.close()
    out = term.text()
    links = [m.group(2) for m in OSC8.finditer(out) if m.group(2)]
    # Links only to what the screen shows as text (the escape became U+FFFD, so the
    # first URL ends there, and the rest is shown, and linked, as the text it is).
    assert set(links) == {"https://good.example/ok", "https://evil.example/",
                          "https://phish.example"}
    assert out.count("\x1b]8;;\x1b\\") == len(links)  # every link is closed
    assert all(m.group(1).startswith("id=") for m in OSC8.finditer(out) if m.group(2))
    # No byte the server sent reaches the terminal as a control character.
    for bad in ("\x07", "\x9b", "\u202e", "\x1b]8;;https://phish", "\x1b\\click"):
        assert bad not in out
