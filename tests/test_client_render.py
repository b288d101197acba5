"""Screen rows from buffers: wrapping, day lines, markers, nick colours, hostile text."""

from __future__ import annotations

from datetime import UTC, datetime

from chat_client.buffer import Buffer, Line
from chat_client.clock import Clock
from chat_client.render import day_row, line_parts, nick_style, rows_for, visible_rows, wrap

# Every test here is pinned to one moment and one zone: nothing may depend on the day the
# suite runs, the machine's zone or its locale.
NOW = datetime(2026, 11, 21, 15, 0, tzinfo=UTC).timestamp()
CLOCK = Clock(now=lambda: NOW, zone=UTC)


def text_of(rows: list[list[tuple[str, str]]]) -> list[str]:
    return ["".join(t for _, t in row) for row in rows]


def ts(day: int, hour: int = 12) -> float:
    return datetime(2026, 11, day, hour, tzinfo=UTC).timestamp()


def test_nick_colour_is_stable_and_case_insensitive() -> None:
    assert nick_style("Alice") == nick_style("alice")
    assert nick_style("alice").startswith("fg:ansi")
    assert len({nick_style(n) for n in ("alice", "bob", "carol", "dave", "eve", "zed")}) > 1


def test_message_row_layout() -> None:
    line = Line("message", ts(21), "hello", nick="bob", id=1)
    (row,) = text_of(wrap(*line_parts(line, "me", CLOCK), 80))
    assert row == "12:00          bob │ hello"


def test_action_notice_pending_failed() -> None:
    waves = Line("action", ts(21), "waves", nick="bob")
    action = text_of(wrap(*line_parts(waves, "me", CLOCK), 80))
    assert action == ["12:00            * │ bob waves"]
    notice = line_parts(Line("notice", ts(21), "bob joined #a"), "me", CLOCK)
    assert notice[1] == [("class:notice", "bob joined #a")]  # dimmed
    pending = Line("message", ts(21), "hi", nick="me", state="pending", own=True)
    assert text_of(wrap(*line_parts(pending, "me", CLOCK), 80))[0].endswith("hi  (sending…)")
    failed = Line("message", ts(21), "hi", nick="me", state="failed", own=True)
    assert "✗ not sent" in text_of(wrap(*line_parts(failed, "me", CLOCK), 80))[0]


def test_wrapping_indents_under_the_text_and_breaks_at_spaces() -> None:
    line = Line("message", ts(21), "alpha beta gamma delta epsilon zeta eta theta", nick="bob")
    rows = text_of(wrap(*line_parts(line, "me", CLOCK), 50))
    assert len(rows) > 1 and all(len(r) <= 50 for r in rows)
    assert rows[0].startswith("12:00          bob │ alpha")
    assert rows[1].startswith(" " * 21) and not rows[1][21:].startswith(" ")
    words = " ".join(r[21:].strip() for r in rows).split()
    assert words == line.text.split()
    # On a narrow screen continuation rows are indented by two only.
    narrow = text_of(wrap(*line_parts(line, "me", CLOCK), 30))
    assert narrow[1].startswith("  ") and narrow[1][2] != " "


def test_multiline_message_and_wide_characters() -> None:
    line = Line("message", ts(21), "first\nsecond 日本語日本語", nick="bob")
    rows = text_of(wrap(*line_parts(line, "me", CLOCK), 30))
    assert rows[0].endswith("first") and rows[1].strip().startswith("second")


def test_control_characters_from_the_server_are_neutralised() -> None:
    line = Line("message", ts(21), "evil\x1b[2J\x07text\x9b", nick="bad\x1bnick")
    rendered = "".join(text_of(wrap(*line_parts(line, "me", CLOCK), 80)))
    assert "\x1b" not in rendered and "\x07" not in rendered and "\x9b" not in rendered
    assert "\ufffd" in rendered


def test_day_change_line_between_days() -> None:
    buf = Buffer("#a", "#a", "room")
    buf.add(Line("message", ts(20, 23), "late", nick="bob", id=1))
    buf.add(Line("message", ts(21, 1), "early", nick="bob", id=2))
    rows = text_of(rows_for(buf, 1, 60, "me", CLOCK))
    assert "Sat 21 Nov 2026" in rows[0] and rows[0].startswith("──")
    # The top line gets a day line too when it is not from today.
    assert "Fri 20 Nov 2026" in text_of(rows_for(buf, 0, 60, "me", CLOCK))[0]
    today = Buffer("#b", "#b", "room")
    today.add(Line("notice", NOW, "now"))
    assert text_of(rows_for(today, 0, 60, "me", CLOCK))[0].endswith("now")
    assert len(day_row(ts(21), 30, CLOCK)[0][1]) <= 30


def test_visible_rows_fill_from_the_bottom_and_show_the_marker() -> None:
    buf = Buffer("#a", "#a", "room")
    for i in range(1, 31):
        buf.add(Line("message", ts(21), f"m{i}", nick="bob", id=i))
    rows = text_of(visible_rows(buf, 60, 10, "me", CLOCK))
    assert len(rows) == 10 and rows[-1].endswith("m30") and rows[0].endswith("m21")
    buf.scroll_to(14)  # bottom line shown: m15
    buf.add(Line("message", ts(21), "m31", nick="bob", id=31))
    rows = text_of(visible_rows(buf, 60, 10, "me", CLOCK))
    assert rows[-2].endswith("m15") and "1 new below" in rows[-1]
    buf.scroll_to(0)  # the very top: the first page, not a mostly empty screen
    rows = text_of(visible_rows(buf, 60, 10, "me", CLOCK))
    assert rows[0].endswith("m1") and len(rows) == 10


def test_input_history_recall() -> None:
    from chat_client.inputline import InputHistory

    h = InputHistory(size=3)
    assert h.up("draft") is None
    for text in ("a", "b", "b", "c", "d"):
        h.add(text)
    assert h.items == ["b", "c", "d"]
    assert [h.up("draft"), h.up("x"), h.up("x"), h.up("x")] == ["d", "c", "b", None]
    assert [h.down(), h.down(), h.down(), h.down()] == ["c", "d", "draft", None]


def test_page_up_near_the_top_ends_on_a_whole_line() -> None:
    from chat_client.render import scroll_target

    buf = Buffer("#a", "#a", "room")
    for i in range(5):
        buf.add(Line("message", ts(21), f"m{i}", nick="x", id=i + 1))
    buf.add(Line("error", ts(21), "word " * 30))  # three rows at width 60
    for i in range(5, 20):
        buf.add(Line("message", ts(21), f"m{i}", nick="x", id=i + 1))
    buf.scroll_to(scroll_target(buf, 60, 10, "me", -1, CLOCK))
    buf.scroll_to(scroll_target(buf, 60, 10, "me", -1, CLOCK))
    rows = text_of(visible_rows(buf, 60, 10, "me", CLOCK))
    assert rows[0].endswith("m0")
    last_rows = text_of(rows_for(buf, buf.bottom(), 60, "me", CLOCK))
    assert rows[-1 - len(last_rows):-1] == last_rows  # the bottom line is shown whole
    assert f"({buf.end - 1 - buf.bottom()} lines" in rows[-1]
