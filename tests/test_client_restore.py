"""Nothing lost, ever (issue 14 §1), without a server: catch-up points that never skip a
message, direct-message catch-up under the nick the messages were sent to, and a state file
that brings a restarted client back where it was."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from test_client_model import ids, join_reply, msg, welcome

from chat_client.buffer import SERVER
from chat_client.catchup import MAX_DM_POINTS
from chat_client.core import Core
from chat_client.store import ClientState, StateStore
from chatd.protocol import nick_key


def dm(mid: int, sender: str, to: str, text: str = "x") -> dict[str, Any]:
    return {"type": "message", "id": mid, "ts": 1763719200000 + mid, "to": to,
            "from": sender, "text": text, "action": False}


def test_a_catch_up_cut_short_resumes_where_its_pages_got_to() -> None:
    core = Core("alice", ["#a"])
    join_reply(core, welcome(core)[0], [msg(1), msg(3)])
    core.disconnected("lost")
    (join,) = welcome(core)
    join_reply(core, join, [msg(4), msg(5)], more=True)  # page one of the catch-up
    core.receive(msg(9))  # live, while pages 6..8 are still to come
    assert core.snapshot().rooms == {"#a": 5}  # not 9: 6..8 have not arrived
    core.disconnected("lost again before the next page")
    (join,) = welcome(core)
    assert join["after"] == 5
    join_reply(core, join, [msg(6), msg(7), msg(8), msg(9), msg(10)])
    assert ids(core.model.get("#a")) == list(range(3, 11)) or \
        ids(core.model.get("#a")) == [1, *range(3, 11)]  # type: ignore[arg-type]
    assert core.snapshot().rooms == {"#a": 10}
    core.receive(msg(12))  # caught up: live messages move the point again
    assert core.snapshot().rooms == {"#a": 12}


def test_a_room_empty_when_joined_is_caught_up_whole_after_a_restart() -> None:
    # Its point is 0, which used to be no point at all: the restarted client joined
    # without `after` and got only the newest page, shown as old backlog, not as news.
    core = Core("alice", ["#a"])
    join_reply(core, welcome(core)[0], [])
    state = core.snapshot()
    assert state.rooms == {"#a": 0}
    again = Core("alice", [], state, focus="@bob")  # (#a not current: it counts unread)
    (join,) = welcome(again)
    assert join["after"] == 0
    join_reply(again, join, [msg(3), msg(5)], more=True)
    (page,) = again.take_outbox()
    assert page == {"type": "history", "room": "#a", "after": 5, "label": page["label"]}
    again.receive({"type": "history", "room": "#a", "more": False, "label": page["label"],
                   "messages": [msg(8)]})
    buf = again.model.get("#a")
    assert buf is not None and ids(buf) == [3, 5, 8]
    assert buf.unread == 3  # missed while the client was closed: news
    assert again.snapshot().rooms == {"#a": 8}
    # A reconnect of a room that is still empty asks from 0 too; a room never caught up
    # (its join was cut short) is joined afresh.
    fresh = Core("alice", ["#a", "#b"])
    first, _ = welcome(fresh)
    join_reply(fresh, first, [])
    fresh.disconnected("lost")
    assert [f.get("after") for f in welcome(fresh)] == [0, None]


def test_dm_catch_up_runs_under_the_nick_taken_back() -> None:
    erin = nick_key("Erin")  # "erln": look-alike nicks are one (protocol.md §3)
    saved = ClientState(buffers=["@Erin"], dms={"dave": {erin: ("Erin", 5)}})
    core = Core("dave", [], saved)
    core.connected()
    (hello,) = core.take_outbox()
    core.receive({"type": "error", "code": "nick_taken", "message": "in use",
                  "fatal": False, "label": hello["label"]})
    (hello,) = core.take_outbox()
    core.receive({"type": "welcome", "version": 1, "nick": "dave_", "label": hello["label"]})
    # As dave_, a history `with: Erin` would return dave_'s conversation, not dave's.
    assert core.take_outbox() == []
    core.receive(dm(7, "Erin", "dave_", "to the stand-in"))  # dave_'s own conversation
    core.tick()
    (nick,) = core.take_outbox()
    core.receive({"type": "nick", "old": "dave_", "new": "dave", "label": nick["label"]})
    (catchup,) = core.take_outbox()
    assert catchup == {"type": "history", "with": "Erin", "after": 5,
                       "label": catchup["label"]}
    core.receive({"type": "history", "with": "Erin", "more": False, "label": catchup["label"],
                  "messages": [dm(6, "Erin", "dave", "sent while dave was stopped")]})
    assert ids(core.model.get(erin)) == [6, 7]  # type: ignore[arg-type]
    state = core.snapshot()
    assert state.dms == {"dave": {erin: ("Erin", 6)}, "dave_": {erin: ("Erin", 7)}}
    assert state.buffers == ["@Erin"]


ERIN = nick_key("erin")


def test_live_dms_during_a_dm_catch_up_do_not_move_its_point() -> None:
    core = Core("dave", [], ClientState(dms={"dave": {ERIN: ("erin", 5)}}))
    (catchup,) = welcome(core, "dave")
    core.receive(dm(20, "erin", "dave", "live"))
    assert core.snapshot().dms["dave"][ERIN] == ("erin", 5)
    core.receive({"type": "history", "with": "erin", "more": True, "label": catchup["label"],
                  "messages": [dm(6, "erin", "dave"), dm(8, "erin", "dave")]})
    (page,) = core.take_outbox()
    assert page["after"] == 8 and page["with"] == "erin"
    assert core.snapshot().dms["dave"][ERIN] == ("erin", 8)
    core.receive({"type": "history", "with": "erin", "more": False, "label": page["label"],
                  "messages": [dm(11, "erin", "dave")]})
    assert core.snapshot().dms["dave"][ERIN] == ("erin", 20)
    assert ids(core.model.get(ERIN)) == [6, 8, 11, 20]  # type: ignore[arg-type]


def test_a_refused_catch_up_keeps_its_point() -> None:
    core = Core("dave", [], ClientState(dms={"dave": {ERIN: ("erin", 5)}}))
    (catchup,) = welcome(core, "dave")
    core.receive({"type": "error", "code": "rate_limited", "message": "slow down",
                  "fatal": False, "label": catchup["label"]})
    core.receive(dm(9, "erin", "dave"))
    assert core.snapshot().dms["dave"][ERIN] == ("erin", 5)  # 6..8 still to fetch
    (retry,) = core.take_outbox()  # that live message starts the catch-up again
    assert retry["with"] == "erin" and retry["after"] == 5
    core.disconnected("lost")
    (again,) = welcome(core, "dave")
    assert again["after"] == 5


def test_restore_brings_back_buffers_order_current_and_points() -> None:
    core = Core("alice", ["#a"])
    out = welcome(core)
    join_reply(core, out[0], [msg(1)])
    for room in ("#b", "#c"):
        core.execute_line(f"/join {room}")
        (join,) = core.take_outbox()
        join_reply(core, join, [msg(2, room=room)])
    core.receive(dm(3, "Bob", "alice"))
    core.execute_line("/switch #b")
    state = core.snapshot()
    assert state == ClientState(buffers=["#a", "#b", "#c", "@Bob"], current="#b",
                                rooms={"#a": 1, "#b": 2, "#c": 2},
                                dms={nick_key("alice"): {"bob": ("Bob", 3)}},
                                session="s1")
    # A restart with one more room on the command line.
    again = Core("alice", ["#d", "#a"], state)
    assert [b.key for b in again.model.order()] == [SERVER, "#a", "#b", "#c", "bob", "#d"]
    out = welcome(again)
    assert [(f["type"], f.get("room"), f.get("with"), f.get("after")) for f in out] == [
        ("join", "#a", None, 1), ("join", "#b", None, 2), ("join", "#c", None, 2),
        ("join", "#d", None, None), ("history", None, "Bob", 3)]
    for frame in out[:4]:
        join_reply(again, frame, [])
    assert again.model.current == "#b"
    # --room names the buffer to show first.
    shown = Core("alice", ["#c"], state, focus="#c")
    for frame in welcome(shown)[:3]:
        join_reply(shown, frame, [])
    assert shown.model.current == "#c"


def test_a_restored_dm_buffer_is_shown_when_it_was_current() -> None:
    core = Core("alice", [], ClientState(buffers=["@Bob"], current="@Bob",
                                         dms={nick_key("alice"): {"bob": ("Bob", 3)}}))
    welcome(core)
    assert core.model.current == "bob"


def test_state_file_round_trip_and_damage(tmp_path: Path) -> None:
    store = StateStore("h:1", "Alice", tmp_path)
    assert store.load() == ClientState()
    state = ClientState(buffers=["#a", "@Bob"], current="@Bob", rooms={"#a": 4},
                        dms={"allce": {"bob": ("Bob", 3)}})
    store.save(state)
    assert StateStore("h:1", "alice", tmp_path).load() == state
    data = json.loads(store.path.read_text())
    data["buffers"] += ["#BAD!", "@9x", 7, "#a"]
    data["rooms"].update({"#b": "x", "#c": -1, "nope": 3, "#d": False})
    data["dms"]["allce"]["carol"] = {"nick": "mallory", "seen": 5}  # key and nick differ
    data["dms"]["bob"] = "junk"
    store.path.write_text(json.dumps(data))
    assert store.load() == state
    store.path.write_text("{not json")
    assert store.load() == ClientState()
    store.path.write_text(json.dumps({"version": 1, "rooms": {"#a": 9}}))  # an older client's
    assert store.load() == ClientState(rooms={"#a": 9})


def test_dm_points_kept_are_the_most_recent(tmp_path: Path) -> None:
    core = Core("alice", [])
    welcome(core)
    for n in range(MAX_DM_POINTS + 5):
        core.receive(dm(n + 1, f"peer{n}", "alice"))
    kept = core.snapshot().dms[nick_key("alice")]
    assert len(kept) == MAX_DM_POINTS
    assert nick_key("peer0") not in kept and nick_key(f"peer{n}") in kept


def test_state_file_problems_are_shown_once_not_printed(tmp_path: Path) -> None:
    store = StateStore("h:1", "alice", tmp_path / "missing" / "dir")
    store.path.parent.parent.write_text("a file where the directory should be")
    store.save(ClientState(rooms={"#a": 1}))
    store.save(ClientState(rooms={"#a": 2}))
    problem = store.take_problem()
    assert problem is not None and problem.startswith("cannot save the client state to ")
    assert store.take_problem() is None  # the same trouble again is not news
    (tmp_path / "bad.json").write_text("[1, 2")
    bad = StateStore("h:1", "bad", tmp_path)
    bad.path = tmp_path / "bad.json"
    assert bad.load() == ClientState()
    assert "ignored the unreadable state file" in (bad.take_problem() or "")
