"""The read marker ("new since you were away"): where it stands, and across restarts."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from chat_client.buffer import SERVER, Line
from chat_client.clock import Clock
from chat_client.localstate import LocalState
from chat_client.model import Model
from chat_client.render import READ_MARKER, visible_rows

NOW = datetime(2026, 11, 21, 15, 0, tzinfo=UTC).timestamp()
CLOCK = Clock(now=lambda: NOW, zone=UTC)


def screen(m: Model) -> list[str]:
    rows = visible_rows(m.cur, 80, 40, m.nick, CLOCK)
    return ["".join(t for _, t in row).strip() for row in rows]


def marker_at(m: Model) -> int | None:
    """Index of the marker row among the screen rows shown, or None."""
    rows = screen(m)
    found = [i for i, row in enumerate(rows) if READ_MARKER.strip() in row]
    assert len(found) <= 1, rows
    return found[0] if found else None


def said(m: Model, room: str, mid: int) -> None:
    m.add(m.room(room), Line("message", NOW - 100 + mid, f"m{mid}", nick="bob", id=mid))


def model() -> Model:
    m = Model("alice", clock=CLOCK)
    m.room("#a")
    m.room("#b")
    m.switch("#a")
    for mid in (1, 2):
        said(m, "#a", mid)
    return m


def test_lines_that_came_while_away_are_below_the_marker() -> None:
    m = model()
    m.switch("#b")
    said(m, "#a", 3)
    said(m, "#a", 4)
    m.switch("#a")
    rows = screen(m)
    at = marker_at(m)
    assert at is not None and rows[at - 1].endswith("m2") and rows[at + 1].endswith("m3")
    said(m, "#a", 5)  # while watching: below the marker too, which stays
    assert screen(m)[-1].endswith("m5") and marker_at(m) == at
    m.switch("#b")  # leaving again: all of it is read
    m.switch("#a")
    assert marker_at(m) is None


def test_coming_back_to_nothing_new_shows_no_marker_while_watching() -> None:
    m = model()
    m.switch("#b")
    m.switch("#a")
    said(m, "#a", 3)
    assert marker_at(m) is None


def test_a_marker_restored_after_a_restart_stands_above_the_first_unread() -> None:
    m = Model("alice", clock=CLOCK)
    m.restore_reads({"#a": 5, "@bob": 2})
    buf = m.room("#a")
    m.switch("#a")  # entered while empty: what was missed is on its way
    for mid in (6, 7):  # the catch-up
        said(m, "#a", mid)
    for mid in (4, 5):  # then a little older context
        m.add(buf, Line("message", NOW - 100 + mid, f"m{mid}", nick="bob", id=mid), new=False)
    rows = screen(m)
    at = marker_at(m)
    assert at is not None and rows[at - 1].endswith("m5") and rows[at + 1].endswith("m6")
    dm = m.dm("Bob")  # a buffer opened later takes its saved point too
    assert dm.read_id == 2


def test_the_points_saved_are_the_last_read_message_of_each_buffer(tmp_path: Path) -> None:
    m = model()
    m.switch("#b")  # #a read up to m2
    said(m, "#a", 3)
    said(m, "#b", 7)  # #b is current: read
    m.add(m.dm("bob"), Line("message", NOW, "psst", nick="bob", id=9))  # never looked at
    assert m.saved_reads() == {"#a": 2, "#b": 7}
    local = LocalState(tmp_path / "s.local.json")
    local.save(m)
    data = json.loads(local.path.read_text())
    assert data["read"] == {"#a": 2, "#b": 7}
    again = Model("alice", clock=CLOCK)
    LocalState(local.path).load(again)
    again.room("#a")
    assert again.get("#a").read_id == 2  # type: ignore[union-attr]
    # A buffer not opened this time keeps its point in the next save.
    assert again.saved_reads() == {"#a": 2, "#b": 7}


def test_a_damaged_state_file_is_reported_once_and_ignored(tmp_path: Path) -> None:
    path = tmp_path / "s.local.json"
    for content in ("{not json", "[1, 2]",
                    '{"read": {"#a": "x", "nope": 3, "@b\\u001b": 1, "#ok": 4}, '
                    '"ignore": ["bob", 7, "bad nick!"]}'):
        path.write_text(content)
        m = Model("alice", clock=CLOCK)
        LocalState(path).load(m)
    assert m.read_points == {"#ok": 4} and list(m.ignored) == ["bob"]
    m = Model("alice", clock=CLOCK)
    path.write_text("{not json")
    local = LocalState(path)
    local.load(m)
    errors = [ln.text for ln in m.get(SERVER).lines if ln.kind == "error"]  # type: ignore[union-attr]
    assert len(errors) == 1 and "unreadable" in errors[0]


def test_an_unwritable_state_dir_is_reported_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    m = model()
    m.ignored["bob"] = "bob"
    local = LocalState(tmp_path / "file" / "s.local.json")  # a file where a dir should be
    local.save(m)
    local.save(m)
    errors = [ln.text for ln in m.get(SERVER).lines if ln.kind == "error"]  # type: ignore[union-attr]
    assert len(errors) == 1 and "cannot save" in errors[0]


def test_clear_forgets_the_lines_and_the_marker_but_not_the_catch_up_point() -> None:
    m = model()
    m.switch("#b")
    said(m, "#a", 3)
    m.switch("#a")
    pending = Line("message", NOW, "on its way", nick="alice", state="pending", own=True, label=9)
    m.add(m.cur, pending)
    m.cur.clear()
    assert m.cur.lines == [pending] and marker_at(m) is None
    assert m.cur.last_id == 3 and m.cur.message_count() == 0
    said(m, "#a", 3)  # a replayed message would come back (the dedup set went with it) ...
    said(m, "#a", 4)  # ... but catch-up starts after last_id, so none is replayed
    assert [ln.id for ln in m.cur.lines] == [3, 4, None]
