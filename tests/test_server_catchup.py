"""Catch-up while others post (protocol.md §8), against the real server.

After `join … after=N`, then `history after` while `more`, a client must receive every
message with id > N exactly once and in id order, across the pages and the live messages,
without deduplicating anything itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from serverproc import ServerProcess, wait_until
from wire import Client, Frame, connect

PAGE = 5


def room_ids(frames: list[Frame], room: str) -> list[int]:
    """Every message id of `room` the client got, pages and live, in arrival order."""
    ids: list[int] = []
    for f in frames:
        if f.get("type") == "history" and f.get("room") == room:
            ids += [m["id"] for m in f["messages"]]
        elif f.get("type") == "message" and f.get("room") == room:
            ids.append(f["id"])
    return ids


def catch_up(client: Client, room: str, after: int,
             between_pages: Callable[[], None] = lambda: None) -> None:
    """protocol.md §8's recipe, to the letter."""
    _, page = client.join(room, after=after)
    while page["more"]:
        between_pages()
        page = client.call({"type": "history", "room": room,
                            "after": page["messages"][-1]["id"]})
        assert page["type"] == "history", page


def test_catch_up_between_posts_gets_each_id_once_in_order(
        start: Callable[..., ServerProcess]) -> None:
    server = start({"history": {"page": PAGE}, "rate": {"msg_burst": 100}})
    with connect(server, "alice") as alice, connect(server, "bob") as bob:
        alice.join("#c")
        acked = [alice.say("#c", f"old {i}")["id"] for i in range(4 * PAGE)]
        last_seen = acked[2]
        bob.join("#other")  # a connection that is up while #c fills

        def post() -> None:  # others keep talking while bob pages
            acked.extend(alice.say("#c", f"new {len(acked)}")["id"] for _ in range(3))

        catch_up(bob, "#c", last_seen, between_pages=post)
        post()  # and after catch-up: these come live
        alice.say("#c", "the end")
        acked.append(bob.wait_type("message", room="#c", text="the end")["id"])
        bob.sync()
        got = room_ids(bob.received, "#c")
        want = [i for i in acked if i > last_seen]
        assert got == want, f"duplicates {sorted({i for i in got if got.count(i) > 1})}"


def test_catch_up_under_a_steady_stream(start: Callable[..., ServerProcess]) -> None:
    """A writer thread posts flat out the whole time; several catch-ups in a row."""
    # Each catch-up pages through half of what the writer posted so far, which grows
    # with how fast it posts: the history rate must not bound the pages (a loaded run
    # met history_burst=100 in the last round).
    server = start({"history": {"page": PAGE},
                    "rate": {"msg_rate": 1000.0, "msg_burst": 1000,
                             "history_rate": 1e6, "history_burst": 1_000_000}})
    stop = threading.Event()
    acked: list[int] = []
    errors: list[BaseException] = []
    with connect(server, "alice") as alice:
        alice.join("#s")
        acked += [alice.say("#s", f"old {i}")["id"] for i in range(3 * PAGE)]

        def writer() -> None:
            try:
                while not stop.is_set():
                    acked.append(alice.say("#s", f"live {len(acked)}")["id"])
            except BaseException as exc:  # reported below, not lost in the thread
                errors.append(exc)

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        try:
            for round_ in range(3):
                with connect(server, f"bob{round_}") as bob:
                    after = acked[len(acked) // 2]
                    catch_up(bob, "#s", after)
                    mark = acked_later(acked)
                    bob.wait(lambda f, m=mark: f.get("type") == "message"  # type: ignore
                             and f.get("id", 0) >= m)
                    got = room_ids(bob.received, "#s")
                    assert len(got) == len(set(got)), "duplicate ids"
                    assert got == sorted(got), "not in id order"
                    assert got[0] == next(i for i in sorted(acked) if i > after)
                    assert set(got) >= {i for i in acked if after < i <= mark}
        finally:
            stop.set()
            thread.join(10)
    assert not errors, errors


def acked_later(acked: list[int]) -> int:
    """An id acknowledged after this call (the writer thread keeps adding them)."""
    count = len(acked)
    wait_until(lambda: len(acked) > count + 2, message="the writer to post on")
    return acked[-1]
