"""History off the routing loop and exact catch-up (chatd.history, through the broker).

The Harness answers history reads with the reader process's own code (chatd.reader.answer)
over the broker's database; `hold_reads` keeps them waiting, and `read_now()` answers them
from the database as it is at that moment while the replies arrive later, like a reader
whose snapshot is older than the messages that follow it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest
from cores import decode_all
from test_broker import Harness
from test_store import CommitFails, Room

from chatd.history import page_frame
from chatd.protocol import HEADER, pack
from chatd.session import CATCHUP_WINDOW


def got_ids(frames: list[dict[str, Any]], room: str = "#r") -> list[int]:
    """Message ids of `room` in arrival order, from pages and live messages alike."""
    ids: list[int] = []
    for f in frames:
        if f["type"] == "history" and f.get("room") == room:
            ids += [m["id"] for m in f["messages"]]
        elif f["type"] == "message" and f.get("room") == room:
            ids.append(f["id"])
    return ids


def room_with_messages(h: Harness, count: int) -> list[int]:
    h.connect(1, "a")
    h.send(1, type="join", room="#r")
    for i in range(count):
        h.send(1, type="msg", room="#r", text=f"m{i}")
    ids = [f["id"] for f in h.take(1) if f["type"] == "message"]
    assert len(ids) == count
    return ids


def post(h: Harness, count: int) -> list[int]:
    for i in range(count):
        h.send(1, type="msg", room="#r", text=f"new{i}")
    return [f["id"] for f in h.take(1) if f["type"] == "message"]


def page_on(h: Harness, sid: int, frames: list[dict[str, Any]]) -> None:
    """Ask for the next page after the last id received (the recipe of protocol.md §8)."""
    last = [f for f in frames if f["type"] == "history"][-1]["messages"][-1]["id"]
    h.send(sid, type="history", room="#r", after=last, label="p")


@pytest.mark.parametrize("recent", [0, 256])
def test_paging_while_others_post_gives_each_id_once_in_order(recent: int) -> None:
    h = Harness(history={"page": 3, "recent": recent})
    ids = room_with_messages(h, 8)
    h.connect(2, "b")
    h.send(2, type="join", room="#r", after=ids[1], label="j")
    frames = h.take(2)
    while [f for f in frames if f["type"] == "history"][-1]["more"]:
        ids += post(h, 2)  # others talk between our pages
        assert got_ids(h.frames.get(2, [])) == []  # ... and none of it reaches us live
        page_on(h, 2, frames)
        frames += h.take(2)
    ids += post(h, 3)  # caught up: live from here
    frames += h.take(2)
    assert got_ids(frames) == ids[2:]


def test_a_page_from_memory_needs_no_read_and_goes_live_at_once() -> None:
    h = Harness()
    ids = room_with_messages(h, 5)
    h.hold_reads = True
    h.connect(2, "b")
    h.send(2, type="join", room="#r", after=ids[2], label="j")
    assert h.reads == []
    joined, history = h.take(2)
    assert [m["id"] for m in history["messages"]] == ids[3:] and history["more"] is False
    assert h.controls[2][-1] == {"c": "done"}
    new = post(h, 1)
    assert got_ids(h.take(2)) == new


@pytest.mark.parametrize("recent", [0, 256])
def test_messages_after_the_readers_snapshot_follow_the_page(recent: int) -> None:
    """A read answered before three more messages arrive: they come right after the page,
    from memory (recent) or from a further read (recent = 0), then live ones."""
    h = Harness(history={"recent": recent})
    ids = room_with_messages(h, 4)
    h.hold_reads = True
    h.connect(2, "b")
    h.send(2, type="join", room="#r", label="j")  # a plain join: newest first
    assert len(h.reads) == 1  # the ring cannot tell whether older messages exist
    replies = h.read_now()
    ids += post(h, 3)
    assert got_ids(h.frames.get(2, [])) == []  # held while the page is being read
    h.answer_reads(replies)
    if recent == 0:
        assert len(h.reads) == 1  # the gap is read too
        h.answer_reads()
    assert h.reads == []
    frames = h.take(2)
    assert [f["type"] for f in frames[:2]] == ["joined", "history"]
    assert got_ids(frames) == ids
    ids += post(h, 2)
    assert got_ids(h.take(2)) == ids[-2:]


def test_the_join_reply_keeps_its_order_with_a_slow_reader() -> None:
    h = Harness(history={"recent": 0})
    room_with_messages(h, 2)
    h.hold_reads = True
    h.connect(2, "b")
    h.send(2, type="join", room="#r", label="j")
    assert h.types(2) == ["joined"]
    assert {"c": "done"} not in h.controls.get(2, [])  # not answered yet
    h.answer_reads()
    assert h.types(2) == ["history"]
    assert h.controls[2][-1] == {"c": "done"}


def test_parting_while_catching_up_ends_it_and_a_rejoin_starts_afresh() -> None:
    h = Harness(history={"page": 2})
    ids = room_with_messages(h, 6)
    h.connect(2, "b")
    h.send(2, type="join", room="#r", after=ids[0])
    assert h.take(2)[-1]["more"] is True
    h.send(2, type="part", room="#r")
    h.take(2)
    ids += post(h, 2)
    assert got_ids(h.take(2)) == []
    h.send(2, type="join", room="#r")  # plain: the newest on_join (50) messages
    assert got_ids(h.take(2)) == ids
    new = post(h, 1)
    assert got_ids(h.take(2)) == new  # live again


def test_a_rejoin_while_a_read_is_out_makes_the_old_reply_harmless() -> None:
    h = Harness(history={"recent": 0, "page": 50})
    ids = room_with_messages(h, 3)
    h.hold_reads = True
    h.connect(2, "b")
    h.send(2, type="join", room="#r", after=0, label=1)
    h.send(2, type="join", room="#r", after=ids[1], label=2)
    h.answer_reads()
    frames = h.take(2)
    pages = [f for f in frames if f["type"] == "history"]
    assert [(p["label"], [m["id"] for m in p["messages"]]) for p in pages] == [
        (1, ids), (2, ids[2:])]
    new = post(h, 1)
    assert got_ids(h.take(2)) == new


def test_direct_message_catch_up_stops_where_live_delivery_began() -> None:
    h = Harness()
    h.connect(1, "a")
    h.connect(9, "b")
    h.send(1, type="msg", to="b", text="while b was away")
    h.send(9, type="quit")
    h.take(1)
    h.connect(2, "b")  # b's new session: direct messages reach it live from here
    h.send(1, type="msg", to="b", text="live")
    (live,) = [f for f in h.take(2) if f["type"] == "message"]
    h.send(2, type="history", label=1, **{"with": "a", "after": 0})
    (page,) = h.take(2)
    assert [m["text"] for m in page["messages"]] == ["while b was away"]
    assert page["more"] is False
    h.send(2, type="history", label=2, **{"with": "a"})  # other reads are not cut
    assert [m["text"] for m in h.take(2)[0]["messages"]] == ["while b was away", "live"]
    h.send(2, type="nick", nick="b2")  # a new nick: its history is someone else's so far
    h.send(1, type="msg", to="b2", text="to b2")
    h.send(2, type="history", label=3, **{"with": "a", "after": 0})
    assert [f for f in h.take(2) if f["type"] == "history"][0]["messages"] == []
    assert live["text"] == "live"


def test_more_reads_in_flight_than_a_session_may_send_is_a_bug_it_pays_for() -> None:
    h = Harness(history={"recent": 0})
    room_with_messages(h, 1)
    h.hold_reads = True
    for i in range(CATCHUP_WINDOW + 1):
        h.send(1, type="history", room="#r", before=10**6, label=i)
    assert len(h.reads) == CATCHUP_WINDOW
    assert h.take(1)[-1]["code"] == "internal"
    assert {"c": "close", "code": "internal"} in h.controls[1]


def test_a_failed_read_is_an_error_and_ends_the_catch_up() -> None:
    h = Harness(history={"recent": 0})
    room_with_messages(h, 2)
    h.hold_reads = True
    h.connect(2, "b")
    h.send(2, type="join", room="#r", label="j")
    (read,) = h.reads
    h.reads = []
    h.answer_reads([{"t": read["t"], "error": "disk I/O error"}])
    joined, err = h.take(2)
    assert (err["code"], err["fatal"], err["label"]) == ("storage_unavailable", False, "j")
    assert "disk I/O error" in err["message"]
    assert h.controls[2][-1] == {"c": "done"}  # the session stays
    new = post(h, 1)
    assert got_ids(h.take(2)) == new  # and hears the room live from now on


def test_replies_for_a_session_that_went_away_are_dropped() -> None:
    h = Harness(history={"recent": 0})
    room_with_messages(h, 2)
    h.hold_reads = True
    h.connect(2, "b")
    h.send(2, type="join", room="#r", label="j")
    replies = h.read_now()
    h.broker.detach(2, "gone", h.now)
    assert h.broker.history.pending == {}
    h.answer_reads(replies)
    assert 2 not in h.broker.drain()


def test_rings_are_bounded_per_room_and_in_total() -> None:
    h = Harness(history={"recent": 4, "recent_mb": 1})
    ids = room_with_messages(h, 10)
    ring = h.broker.history.rings["#r"]
    assert [i for i, _ in ring.entries] == ids[-4:] and ring.floor == ids[-5]
    h.hold_reads = True
    h.connect(2, "b")
    h.send(2, type="join", room="#r", after=ids[-5])  # the ring reaches back that far
    assert h.reads == []
    h.send(2, type="join", room="#r", after=ids[-6])  # not that far: a read
    assert len(h.reads) == 1
    # A reload (SIGHUP sets broker.config) shrinks the rings at once.
    h.broker.config = h.broker.config.with_values({**h.broker.config.values,
                                                   "history_recent_mb": 0})
    assert h.broker.history.ring_bytes == 0 and ring.floor == ids[-1]


def test_page_frame_is_the_packed_history_reply_and_fits_max_frame() -> None:
    msgs = [{"type": "message", "id": i, "ts": 1, "room": "#r", "from": "a",
             "text": "x" * 300, "action": False} for i in range(1, 11)]
    payloads = [msgpack.packb(m) for m in msgs]
    head = {"type": "history", "room": "#r", "label": "l"}
    frame, n, more = page_frame(head, payloads, False, True, 65536)
    assert frame == pack({**head, "messages": msgs, "more": False}) and n == 10
    (decoded,) = decode_all(frame)
    assert decoded["messages"] == msgs
    for keep_oldest in (True, False):
        frame, n, more = page_frame(head, payloads, False, keep_oldest, 1024)
        assert len(frame) - HEADER.size <= 1024 and more is True and 1 <= n < 10
        ids = [m["id"] for m in decode_all(frame)[0]["messages"]]
        assert ids == (list(range(1, n + 1)) if keep_oldest else list(range(11 - n, 11)))
    frame, n, more = page_frame(head, payloads[:1], False, True, 100)  # one always goes
    assert n == 1 and more is False


def test_a_message_that_is_rolled_back_is_in_no_page_and_its_id_comes_once(
        tmp_path: Path) -> None:
    """A message in the ring whose commit fails was never stored, and the next message
    gets its id: no page from memory may show it, and catch-up must not skip its id."""
    r = Room(tmp_path / "h.sqlite3")
    r.send(1, type="msg", room="#r", text="kept")
    (kept,) = [f["id"] for f in r.frames()[1] if f["type"] == "message"]
    r.store.db = CommitFails(r.store.db)  # type: ignore[assignment]
    r.send(1, type="msg", room="#r", text="doomed", label="d")
    r.broker.attach(3, "s3")
    r.send(3, type="hello", version=1, nick="carol")
    r.send(3, type="join", room="#r", after=0, label="j")  # from memory: commits first
    out = r.frames()
    assert [(f["type"], f.get("code")) for f in out[1]] == [("error", "storage_unavailable"),
                                                              ("join", None)]
    assert not [f for frames in out.values() for f in frames if f["type"] == "message"]
    (page,) = [f for f in out[3] if f["type"] == "history"]
    assert [m["text"] for m in page["messages"]] == ["kept"] and page["more"] is False
    r.store.db.broken = False  # type: ignore[attr-defined]
    r.send(1, type="msg", room="#r", text="again")
    (again,) = [f for f in r.frames()[3] if f["type"] == "message"]
    assert again["id"] == kept + 1 and again["text"] == "again"  # the id came back, once


def test_rings_forget_what_retention_deleted() -> None:
    h = Harness()
    ids = room_with_messages(h, 5)
    h.broker.history.pruned(ids[2])
    ring = h.broker.history.rings["#r"]
    assert [i for i, _ in ring.entries] == ids[3:] and ring.floor == ids[2]
    h.hold_reads = True
    h.connect(2, "b")
    h.send(2, type="join", room="#r", after=ids[1])  # older than memory holds: a read
    assert len(h.reads) == 1


def test_a_failed_read_of_the_gap_after_a_page_is_said_and_ends_the_catch_up() -> None:
    h = Harness(history={"recent": 0})
    room_with_messages(h, 2)
    h.hold_reads = True
    h.connect(2, "b")
    h.send(2, type="join", room="#r", label="j")
    replies = h.read_now()
    post(h, 2)  # after the page's snapshot: the server reads them itself
    h.answer_reads(replies)
    (gap,) = h.reads
    h.reads = []
    h.answer_reads([{"t": gap["t"], "error": "disk I/O error"}])
    frames = h.take(2)
    assert [f["type"] for f in frames] == ["joined", "history", "error"]
    assert frames[-1]["code"] == "storage_unavailable" and "label" not in frames[-1]
    new = post(h, 1)
    assert got_ids(h.take(2)) == new
