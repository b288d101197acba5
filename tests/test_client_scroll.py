"""Scrolling costs O(screen) at any buffer size; Home/End and the mouse wheel.

The cost is counted (lines visited and lines wrapped per key), never timed: the same
keys on a buffer 20 times larger must do the same work.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from fakechatd import FakeChatd, message
from tuirunner import CTRL_END, CTRL_HOME, END, HOME, PGDN, PGUP, TUI, wheel

from chat_client import render
from chat_client.buffer import Line
from chat_client.clock import Clock
from chat_client.messagepane import MessagesControl
from chat_client.model import Model

NOW = datetime(2026, 11, 21, 15, 0, tzinfo=UTC).timestamp()
CLOCK = Clock(now=lambda: NOW, zone=UTC)
WIDTH, HEIGHT = 80, 24


def pane(model: Model, n: int) -> MessagesControl:
    """A message pane over a room of n lines: every fifth one wraps to several rows."""
    buf = model.room("#a")
    buf.scrollback = n
    for i in range(1, n + 1):
        text = f"m{i} " + ("words to wrap " * 12 if i % 5 == 0 else "short")
        model.add(buf, Line("message", NOW - (n - i), text, nick="bob", id=i), new=False)
    model.switch("#a")
    control = MessagesControl(model)
    control.create_content(WIDTH, HEIGHT)
    return control


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts lines visited (rows_for) and lines wrapped (wrap) by the renderer."""
    calls: Counter[str] = Counter()
    for name in ("rows_for", "wrap"):
        real = getattr(render, name)

        def counting(*args: object, _real: Callable[..., object] = real,
                     _name: str = name) -> object:
            calls[_name] += 1
            return _real(*args)

        monkeypatch.setattr(render, name, counting)
    return calls


def key_costs(control: MessagesControl, calls: Counter[str]) -> list[tuple[str, int, int]]:
    """(key, lines visited, lines wrapped) for each key and the redraw after it."""
    keys: list[tuple[str, Callable[[], None]]] = [
        ("PageUp", lambda: control.scroll(-1)), ("PageUp", lambda: control.scroll(-1)),
        ("wheel up", lambda: control.scroll_rows(-render.WHEEL_ROWS)),
        ("PageDown", lambda: control.scroll(1)), ("Home", control.scroll_top),
        ("PageUp", lambda: control.scroll(-1)), ("wheel down", lambda: control.scroll_rows(3)),
        ("PageDown", lambda: control.scroll(1)), ("End", control.scroll_bottom),
        ("PageUp", lambda: control.scroll(-1)),
    ]
    out = []
    for name, press in keys:
        calls.clear()
        press()
        control.create_content(WIDTH, HEIGHT)
        out.append((name, calls["rows_for"], calls["wrap"]))
    return out


def test_every_key_costs_o_screen_not_o_buffer(counted: Counter[str]) -> None:
    small = key_costs(pane(Model("me", clock=CLOCK), 2_000), counted)
    big = key_costs(pane(Model("me", clock=CLOCK), 40_000), counted)
    assert small == big  # the same work whatever lies above and below
    for name, visited, wrapped in big:
        assert visited <= 4 * HEIGHT, (name, visited)
        assert wrapped <= 2 * HEIGHT, (name, wrapped)


def test_scrolling_lands_where_it_should() -> None:
    model = Model("me", clock=CLOCK)
    control = pane(model, 2_000)
    buf = model.cur
    control.scroll_top()
    rows = render.visible_rows(buf, WIDTH, HEIGHT, "me", CLOCK)
    assert "bob │ m1 short" in "".join(t for _, t in rows[0])
    assert len(rows) == HEIGHT  # a full screen, the bottom line whole above the marker
    shown = render.rows_for(buf, buf.bottom(), WIDTH, "me", CLOCK)
    assert rows[-1 - len(shown):-1] == shown
    control.scroll_top()  # again: stays
    assert rows == render.visible_rows(buf, WIDTH, HEIGHT, "me", CLOCK)
    control.scroll(-1)  # PageUp at the top: stays
    assert rows == render.visible_rows(buf, WIDTH, HEIGHT, "me", CLOCK)
    control.scroll_bottom()
    assert buf.anchor is None
    control.scroll_rows(-3)  # one wheel notch: m2000 alone wraps to more rows than that
    assert len(render.line_rows(buf.lines[-1], WIDTH, "me", CLOCK)) >= 3
    assert buf.anchor == buf.end - 2
    for i in range(2001, 2004):
        model.add(buf, Line("message", NOW, f"m{i}", nick="bob", id=i))
    control.scroll_rows(3)  # down past m2000's rows: it is the bottom line now
    assert buf.lines[buf.anchor - buf.trimmed].text.startswith("m2000 ")  # type: ignore[operator]
    assert buf.new_below == 3
    control.scroll_rows(3)  # three one-row lines
    assert buf.anchor is None  # back at the bottom: following again


def test_wrapped_rows_are_kept_until_the_line_or_width_changes(counted: Counter[str]) -> None:
    model = Model("me", clock=CLOCK)
    control = pane(model, 500)
    counted.clear()
    control.create_content(WIDTH, HEIGHT)
    assert counted["wrap"] == 0  # a redraw with nothing changed wraps nothing
    line = model.cur.lines[-1]
    line.state = "failed"
    control.create_content(WIDTH, HEIGHT)
    assert counted["wrap"] == 1  # only the line that changed
    assert "✗ not sent" in "".join(t for _, t in control.create_content(
        WIDTH, HEIGHT).get_line(HEIGHT - 1))
    counted.clear()
    control.create_content(WIDTH - 10, HEIGHT)  # a resize re-wraps what is shown
    assert 0 < counted["wrap"] <= HEIGHT


def test_a_line_that_cannot_be_rendered_is_a_placeholder_alone() -> None:
    model = Model("me", clock=CLOCK)
    buf = model.room("#a")
    model.switch("#a")
    for i in range(1, 6):
        model.add(buf, Line("message", NOW, f"m{i}", nick="bob", id=i))
    buf.lines[2].text = None  # type: ignore[assignment]  # whatever breaks line_parts
    content = MessagesControl(model).create_content(WIDTH, 10)
    rows = ["".join(t for _, t in content.get_line(i)) for i in range(content.line_count)]
    assert not any("render error" in row for row in rows)
    assert [r for r in rows if "cannot be shown" in r] == ["[this line cannot be shown: "
                                                          "TypeError]"]
    for i in (1, 2, 4, 5):
        assert any(row.endswith(f"bob │ m{i}") for row in rows), rows


def test_a_huge_message_shows_its_start_and_what_is_left_out() -> None:
    line = Line("message", NOW, "x" * (render.MAX_SHOWN + 5000), nick="bob", id=1)
    rows = render.wrap(*render.line_parts(line, "me", CLOCK), WIDTH)
    assert "[…5000 more characters not shown]" in "".join(t for _, t in rows[-1])


# The keys, typed into the real application --------------------------------------------

@pytest.fixture
def tui() -> Iterator[TUI]:
    server = FakeChatd(lambda room: [message(i) for i in range(1, 301)])
    client = TUI(server.host, server.port, "alice", ["#a"], clock=CLOCK)
    try:
        client.wait(lambda: client.core.model.cur.key == "#a"
                    and client.core.model.cur.message_count() == 300, "the join's history")
        yield client
    finally:
        client.close()
        server.close()


def test_home_end_ctrl_home_ctrl_end_and_the_wheel(tui: TUI) -> None:
    m = tui.core.model
    anchor = lambda: m.cur.anchor  # noqa: E731
    top = lambda: tui.pane()[1].endswith("bob │ m1")  # noqa: E731  (under a day line)
    tui.type(HOME)  # empty input line: the top of the buffer
    tui.wait(top, "Home to the top")
    tui.type(END)
    tui.wait(lambda: anchor() is None, "End to the bottom")
    tui.type("draft" + HOME)  # with text, Home and End edit the input line
    tui.wait(lambda: tui.ui.input.cursor_position == 0, "cursor home")  # type: ignore[union-attr]
    assert anchor() is None
    tui.type(CTRL_HOME)  # Ctrl+Home scrolls whatever the input holds
    tui.wait(top, "Ctrl+Home to the top")
    tui.type(CTRL_END)
    tui.wait(lambda: anchor() is None, "Ctrl+End to the bottom")
    assert tui.ui.input.text == "draft"  # type: ignore[union-attr]
    tui.type(wheel(up=True))  # three rows: "you joined" under its day line, and m300
    tui.wait(lambda: anchor() == m.cur.end - 3, "wheel up three rows")
    tui.type(wheel(up=True))
    tui.wait(lambda: anchor() == m.cur.end - 6, "wheel up three more")
    tui.type(wheel(up=False))
    tui.wait(lambda: tui.pane()[-2].endswith("bob │ m299"), "wheel down three")
    tui.type(PGUP + PGDN + PGDN)
    tui.wait(lambda: anchor() is None, "PageDown back to the bottom")
