"""The per-connection state machine, driven with a fake clock (integer milliseconds)."""

from __future__ import annotations

from typing import Any

import msgpack
from cores import decode_all

from chatd.config import Config, parse_settings
from chatd.protocol import pack
from chatd.session import CATCHUP_WINDOW, MAX_HELD, Session, State


def make(now_ms: int = 0, **settings: Any) -> Session:
    return Session(Config().with_values(parse_settings(settings)), now_ms)


def out(session: Session) -> list[dict[str, Any]]:
    frames = decode_all(b"".join(session.to_client))
    session.to_client.clear()
    return frames


def forwarded(session: Session) -> list[dict[str, Any]]:
    frames = decode_all(b"".join(session.to_broker))
    session.to_broker.clear()
    return frames


def feed(s: Session, now_ms: int = 0, **req: Any) -> None:
    s.receive_data(pack(req), now_ms)


def welcome(session: Session) -> None:
    feed(session, type="hello", version=1, nick="a")
    session.control({"c": "welcome", "nick": "a"})
    forwarded(session)


def test_only_known_fields_reach_the_broker() -> None:
    s = make()
    feed(s, type="hello", version=1, nick="a", label=1, evil={"x": 1}, session="old")
    assert forwarded(s) == [{"type": "hello", "version": 1, "nick": "a", "session": "old",
                             "label": 1}]


def test_requests_before_hello_are_refused_locally() -> None:
    s = make()
    feed(s, type="join", room="#a", label=4)
    assert out(s)[0]["code"] == "not_registered" and forwarded(s) == []
    feed(s, type="hello", version=1, nick="a")
    feed(s, type="join", room="#a")  # pipelined after hello: goes on to the broker
    assert [f["type"] for f in forwarded(s)] == ["hello", "join"]


def test_ping_is_answered_locally_with_token_and_label() -> None:
    s = make()
    feed(s, type="ping", token=b"\x01", label=3)
    assert out(s) == [{"type": "pong", "token": b"\x01", "label": 3}]
    assert forwarded(s) == []


def test_bad_frames_get_errors_and_the_session_goes_on() -> None:
    s = make()
    s.receive_data(b"\x00\x00\x00\x01\xc1" + pack({"type": "nope"}) + b"\x00\x00\x00\x00", 0)
    assert [f["code"] for f in out(s)] == ["malformed", "unknown_type", "malformed"]
    assert s.ended is None


def test_oversized_frame_ends_the_session() -> None:
    s = make(limits={"max_frame": 2048, "max_text": 500})
    s.receive_data(b"\x00\x01\x00\x00", 0)
    (err,) = out(s)
    assert (err["code"], err["fatal"], err["limit"]) == ("frame_too_large", True, "max_frame")
    assert s.ended == "frame_too_large"
    assert forwarded(s)[0]["code"] == "frame_too_large"


def test_handshake_deadline() -> None:
    s = make(keepalive={"handshake_timeout": 5.0})
    assert s.next_deadline() == 5_000
    s.tick(4_900)
    assert s.ended is None
    s.tick(5_000)
    assert out(s)[0]["code"] == "handshake_timeout" and s.ended == "handshake_timeout"


def test_welcome_cancels_the_handshake_deadline() -> None:
    s = make(keepalive={"handshake_timeout": 5.0, "ping_interval": 100.0})
    welcome(s)
    s.tick(50_000)
    assert s.ended is None


def test_keepalive_pings_then_times_out() -> None:
    s = make(keepalive={"ping_interval": 10.0, "ping_timeout": 5.0})
    welcome(s)
    s.tick(10_000)
    (ping,) = out(s)
    assert ping["type"] == "ping"
    assert s.next_deadline() == 15_000
    s.tick(15_000)
    assert out(s)[0]["code"] == "ping_timeout"
    assert forwarded(s) == [{"type": "quit", "reason": "ping timeout", "code": "ping_timeout"}]


def test_any_frame_counts_as_alive() -> None:
    s = make(keepalive={"ping_interval": 10.0, "ping_timeout": 5.0})
    welcome(s)
    s.tick(10_000)
    out(s)
    feed(s, 12_000, type="pong", token=1)
    s.tick(15_000)
    assert s.ended is None and out(s) == []
    s.tick(22_000)
    assert out(s)[0]["type"] == "ping"  # ten seconds after the pong


def test_rate_limit_then_flood() -> None:
    s = make(rate={"msg_rate": 1.0, "msg_burst": 3, "flood_strikes": 5})
    welcome(s)
    for _ in range(3):
        feed(s, 0, type="msg", room="#a", text="x")
    assert len(forwarded(s)) == 3
    feed(s, 0, type="msg", room="#a", text="x", label=7)
    (err,) = out(s)
    assert (err["code"], err["limit"], err["label"]) == ("rate_limited", "msg_rate", 7)
    assert 0.9 <= err["retry_after"] <= 1.0
    feed(s, 1_000, type="msg", room="#a", text="x")  # a token came back
    assert len(forwarded(s)) == 1
    for _ in range(5):
        feed(s, 1_000, type="msg", room="#a", text="x")
    assert s.ended == "flood" and out(s)[-1]["code"] == "flood"


def test_budgets_are_separate_so_catch_up_is_not_throttled() -> None:
    s = make(rate={"msg_rate": 0.01, "msg_burst": 1})
    welcome(s)
    feed(s, type="msg", room="#a", text="x")
    for i in range(50):
        feed(s, type="join", room=f"#r{i}", after=0)
    assert out(s) == []  # no join was refused
    sent = forwarded(s)
    while len(sent) < 51:  # the broker answers each join; the next ones follow
        s.control({"c": "done"})
        sent += forwarded(s)
    assert [f["room"] for f in sent[1:]] == [f"#r{i}" for i in range(50)]


def test_catch_up_in_flight_is_bounded_and_order_kept() -> None:
    s = make()
    welcome(s)
    for i in range(6):
        feed(s, type="join", room=f"#r{i}", after=0)
    feed(s, type="msg", room="#r5", text="after my join")  # must not overtake it
    feed(s, type="ping", token=1)  # answered locally, never held
    assert [f["type"] for f in forwarded(s)] == ["join"] * CATCHUP_WINDOW
    assert out(s) == [{"type": "pong", "token": 1}]
    s.control({"c": "done"})
    assert [f.get("room") for f in forwarded(s)] == ["#r4"]
    s.control({"c": "done"})
    assert [(f["type"], f["room"]) for f in forwarded(s)] == [("join", "#r5")]
    for _ in range(CATCHUP_WINDOW - 1):  # the msg's ack must not overtake a join's reply
        s.control({"c": "done"})
        assert forwarded(s) == []
    s.control({"c": "done"})
    assert [(f["type"], f["room"]) for f in forwarded(s)] == [("msg", "#r5")]
    feed(s, type="join", room="#r6")
    feed(s, type="rooms")
    assert [f["type"] for f in forwarded(s)] == ["join"]
    feed(s, type="quit")  # leaving drops what still waits and goes at once
    assert forwarded(s) == [{"type": "quit"}]


def test_requests_waiting_behind_catch_up_are_bounded() -> None:
    s = make(rate={"history_burst": 10**6, "cmd_burst": 10**6})
    welcome(s)
    for i in range(CATCHUP_WINDOW + MAX_HELD):  # nothing is answered meanwhile
        feed(s, type="history", room="#r", label=i)
    assert len(forwarded(s)) == CATCHUP_WINDOW and not s.ended and out(s) == []
    feed(s, type="rooms")
    (err,) = out(s)
    assert (err["code"], err["fatal"], s.ended) == ("flood", True, "flood")


def test_strikes_reset_after_a_pause() -> None:
    s = make(rate={"cmd_rate": 0.01, "cmd_burst": 1, "flood_strikes": 3})
    welcome(s)
    for t in (0, 0, 0, 11_000, 11_000, 22_000):
        feed(s, t, type="rooms")
    assert s.ended is None


def test_quit_is_forwarded_and_ends() -> None:
    s = make()
    welcome(s)
    feed(s, type="quit", reason="bye")
    assert forwarded(s) == [{"type": "quit", "reason": "bye"}] and s.ended == "quit"


def test_quit_ends_the_session_whatever_its_fields() -> None:
    """protocol.md §4: `quit` always ends the session. Fields of the wrong type are
    dropped (the broker replaces a bad reason with "quit"); it is never rate limited."""
    cases: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"reason": None}, {}), ({"reason": 5}, {}), ({"label": None}, {}),
        ({"label": [1], "reason": "bye"}, {"reason": "bye"}), ({"label": "q"}, {"label": "q"}),
        ({"reason": "bell\x07" * 300}, {"reason": "bell\x07" * 300}),
    ]
    for fields, canonical in cases:
        s = make()
        welcome(s)
        feed(s, type="quit", **fields)
        assert s.ended == "quit", fields
        assert out(s) == [] and forwarded(s) == [{"type": "quit", **canonical}], fields
    s = make(rate={"cmd_rate": 0.01, "cmd_burst": 1})
    welcome(s)
    feed(s, type="rooms")
    feed(s, type="rooms")
    assert out(s)[0]["code"] == "rate_limited"
    feed(s, type="quit", reason=None)
    assert s.ended == "quit" and forwarded(s)[-1] == {"type": "quit"}
    s = make()  # before hello too
    feed(s, type="quit", reason=None)
    assert s.ended == "quit" and forwarded(s) == [{"type": "quit"}]


def test_slow_consumer_close_drops_pending_output() -> None:
    s = make()
    welcome(s)
    s.control({"c": "close", "code": "slow_consumer", "limit": "child_queue"})
    assert s.drop_pending and s.ended == "slow_consumer"
    assert out(s)[0]["limit"] == "child_queue"
    assert forwarded(s) == []  # the parent already knows


def test_broker_loss_grace_period() -> None:
    s = make(keepalive={"broker_grace": 3.0})
    welcome(s)
    s.broker_lost(10_000)
    s.tick(12_900)
    assert s.ended is None
    s.tick(13_000)
    assert out(s)[0]["code"] == "server_gone"


def test_config_push_changes_limits() -> None:
    s = make()
    welcome(s)
    values = dict(s.config.values, max_frame=2048, msg_burst=1)
    s.control({"c": "config", "values": values})
    assert s.decoder.max_frame == 2048 and s.buckets["msg"].burst == 1


def test_garbage_stream_never_raises() -> None:
    s = make()
    for chunk in (b"\x00\x00\x00\x05" + msgpack.packb([1, 2]) + b"\xff", b"\x00" * 9):
        s.receive_data(chunk, 0)
    assert all(f["type"] == "error" for f in out(s))


def test_ping_with_a_bad_label_or_token_is_an_error_like_any_request() -> None:
    s = make()
    feed(s, type="ping", token=1.5)
    feed(s, type="ping", token=1, label=[1])
    assert [f["code"] for f in out(s)] == ["wrong_type", "wrong_type"]


def test_states_walk_hello_welcome_closing_ended(caplog: Any) -> None:
    s = make()
    caplog.set_level("DEBUG", logger="chatd.session")
    assert s.state is State.AWAITING_HELLO
    feed(s, type="hello", version=1, nick="a")
    assert s.state is State.REGISTERING
    feed(s, type="hello", version=1, nick="b")  # a retry while registering goes on
    assert [f["nick"] for f in forwarded(s)] == ["a", "b"] and out(s) == []
    s.control({"c": "welcome", "nick": "b"})
    assert s.state is State.WELCOMED
    feed(s, type="hello", version=1, nick="c")
    assert out(s)[0]["code"] == "already_registered" and s.state is State.WELCOMED
    s.client_closed()
    assert s.state is State.CLOSING and s.ended == "closed"
    s.control({"c": "welcome", "nick": "x"})  # too late: no way back
    assert s.state is State.CLOSING
    s.finished()
    assert s.state is State.ENDED
    moves = [r.getMessage() for r in caplog.records if "->" in r.getMessage()]
    assert moves == ["awaiting hello -> registering", "registering -> welcomed",
                     "welcomed -> closing (closed)", "closing -> ended"]
