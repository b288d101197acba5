"""Integration: bad input from a client (issue 2, section 7) against the real server.

Every bad frame gets an `error` frame with the documented code; only a framing error
(`frame_too_large`) closes the connection, and only that one.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from serverproc import FAST, ServerProcess
from wire import Client, Frame, connect


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def packed(obj: Any) -> bytes:
    return frame(msgpack.packb(obj, use_bin_type=True))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("badinput"),
                        {**FAST, "limits": {"max_text": 100}}).start()
    yield srv
    assert srv.stop() == 0
    assert "Traceback" not in "\n".join(srv.lines)


# Nicks unique in the module: the server is the module's, and a client closed by the test
# before holds its nick until the server has seen it go, which on a busy machine can come
# after the next test's hello.
SERIAL = itertools.count()


def new(server: ServerProcess, clients: list[Client], nick: str | None = None) -> Client:
    c = connect(server, nick)
    clients.append(c)
    return c


def next_error(c: Client) -> Frame:
    err = c.wait_type("error")
    assert err["fatal"] is False, err
    return err


def assert_alive(c: Client) -> None:
    """The connection still works: a ping comes back, and so does a broker round trip."""
    pong = c.call({"type": "ping", "token": "alive"})
    assert pong == {"type": "pong", "token": "alive", "label": pong["label"]}
    if c.nick:
        c.sync()


# Raw payloads that cannot carry a usable label: (bytes on the wire, expected code).
RAW_CASES = [
    pytest.param(frame(b"\xc1"), "malformed", id="reserved-byte"),
    pytest.param(frame(b"\x82\xa4type\xa4ping"), "malformed", id="truncated-map"),
    pytest.param(frame(msgpack.packb({"type": "ping"}) + b"\x01"), "malformed",
                 id="two-values"),
    pytest.param(frame(b""), "malformed", id="empty-payload"),
    pytest.param(packed([1, 2, 3]), "not_a_map", id="array"),
    pytest.param(packed("ping"), "not_a_map", id="string"),
    pytest.param(packed({"kind": "ping"}), "not_a_map", id="no-type"),
    pytest.param(packed({"type": 7}), "not_a_map", id="int-type"),
    pytest.param(frame(b"\x82\xa4type\xa4join\xa4room\xa3#\xff\xfe"), "invalid_utf8",
                 id="bad-utf8-value"),
    pytest.param(frame(b"\x82\xa4type\xa4ping\xa2\xc3\x28\x01"), "invalid_utf8",
                 id="bad-utf8-key"),
]


@pytest.mark.parametrize("registered", [False, True], ids=["before-hello", "after-hello"])
@pytest.mark.parametrize(("data", "code"), RAW_CASES)
def test_undecodable_frames_get_an_error_and_the_connection_lives(server, clients, data,
                                                                  code, registered):
    c = new(server, clients, "raw" + str(len(clients) + 100 * registered) if registered
            else None)
    c.send_raw(data)
    err = next_error(c)
    assert err["code"] == code, err
    assert isinstance(err["message"], str) and err["message"]
    assert_alive(c)


# Well-formed maps that break the schema: (request, expected code). Sent with a label.
SCHEMA_CASES = [
    ({"type": "frobnicate"}, "unknown_type"),
    ({"type": "join"}, "missing_field"),
    ({"type": "msg", "room": "#x"}, "missing_field"),
    ({"type": "nick"}, "missing_field"),
    ({"type": "join", "room": 5}, "wrong_type"),
    ({"type": "msg", "room": "#x", "text": b"bytes"}, "wrong_type"),
    ({"type": "msg", "room": "#x", "text": "hi", "action": "yes"}, "wrong_type"),
    ({"type": "history", "room": "#x", "limit": 1.5}, "wrong_type"),
    ({"type": "join", "room": "#x", "after": True}, "wrong_type"),
    ({"type": "msg", "room": "#x", "to": "bob", "text": "hi"}, "invalid_value"),
    ({"type": "msg", "text": "hi"}, "missing_field"),
]


@pytest.mark.parametrize(("req", "code"), SCHEMA_CASES,
                         ids=[f"{r['type']}-{c}" for r, c in SCHEMA_CASES])
def test_schema_errors_carry_code_and_label(server, clients, req, code):
    c = new(server, clients, f"schema{next(SERIAL)}")
    err = c.call(req)
    assert err["type"] == "error" and err["code"] == code, err
    assert err["fatal"] is False
    assert_alive(c)


@pytest.mark.parametrize("label", [1.5, True, "x" * 65, [1], {"a": 1}, None])
def test_a_bad_label_is_wrong_type(server, clients, label):
    c = new(server, clients, f"label{next(SERIAL)}")
    c.send({"type": "rooms", "label": label})
    err = next_error(c)
    assert err["code"] == "wrong_type", err
    assert "label" not in err  # it had no valid label to echo
    assert_alive(c)


def test_text_rules(server, clients):
    a = new(server, clients, "texter")
    b = new(server, clients, "reader")
    a.join("#text")
    b.join("#text")
    for text, code in (("", "text_empty"), ("   \n\t ", "text_empty"),
                       ("x" * 101, "text_too_long"), ("é" * 51, "text_too_long"),
                       ("bell\x07", "invalid_value"), ("esc\x1b[2J", "invalid_value"),
                       ("c1\x9b", "invalid_value"), ("nul\x00", "invalid_value")):
        err = a.error({"type": "msg", "room": "#text", "text": text})
        assert err["code"] == code, (text, err)
        assert err["fatal"] is False
        if code == "text_too_long":
            assert err.get("limit") == "max_text", err
        err = a.error({"type": "msg", "to": "reader", "text": text})
        assert err["code"] == code, (text, err)
    # The boundaries are accepted: exactly max_text bytes, several lines, tabs.
    for text in ("x" * 100, "é" * 50, "line one\nline two\n\tindented"):
        ack = a.say("#text", text)
        assert b.wait_type("message", id=ack["id"])["text"] == text
    b.sync()
    assert not b.pending("message"), "a refused message was delivered"


def test_requests_before_hello_are_not_registered(server, clients):
    c = new(server, clients)
    for req in ({"type": "msg", "room": "#x", "text": "hi"}, {"type": "join", "room": "#x"},
                {"type": "rooms"}, {"type": "who", "room": "#x"},
                {"type": "nick", "nick": "sneaky"}, {"type": "history", "with": "bob"}):
        err = c.call(req)
        assert (err["type"], err["code"], err["fatal"]) == ("error", "not_registered", False)
    assert_alive(c)
    c.hello("latecomer")
    c.join("#x")
    # Pipelining: join before welcome is answered in order once hello succeeded.
    d = new(server, clients)
    hello = d.request({"type": "hello", "version": 1, "nick": "piper"})
    join = d.request({"type": "join", "room": "#x"})
    assert d.reply(hello)["type"] == "welcome"
    assert d.reply(join)["type"] == "joined"
    # ... and after a failed hello, they get not_registered.
    e = new(server, clients)
    hello = e.request({"type": "hello", "version": 1, "nick": "PIPER"})
    join = e.request({"type": "join", "room": "#x"})
    assert e.reply(hello)["code"] == "nick_taken"
    assert e.reply(join)["code"] == "not_registered"


@pytest.mark.parametrize("fields", [{"reason": None}, {"reason": 7, "label": None},
                                    {"reason": "bell\x07"}, {"label": [1]}],
                         ids=["nil-reason", "int-reason-nil-label", "bad-reason", "bad-label"])
def test_quit_ends_the_session_whatever_its_fields(server, clients, fields):
    watcher = new(server, clients, f"watcher{len(clients)}")
    c = new(server, clients, f"leaver{len(clients)}")
    for x in (watcher, c):
        x.join("#leaving")
    c.send({"type": "quit", **fields})
    frames = c.wait_closed()
    assert not [f for f in frames if f.get("type") == "error"], frames
    assert watcher.wait_type("quit", nick=c.nick)["reason"] == "quit"


def test_forged_fields_change_nothing(server, clients):
    a = new(server, clients, "honest")
    b = new(server, clients, "victim")
    a.join("#forge")
    b.join("#forge")
    ack = a.call({"type": "msg", "room": "#forge", "text": "hi", "from": "victim",
                  "id": 1, "ts": 0, "nick": "victim", "sid": 2, "session": "x"})
    assert ack["type"] == "ack", ack
    got = b.wait_type("message", id=ack["id"])
    assert got["from"] == "honest" and got["ts"] == ack["ts"] and got["id"] > 1, got
    assert set(got) == {"type", "id", "ts", "room", "from", "text", "action"}


def test_oversized_frame_is_fatal_for_that_connection_only(server, clients):
    a, b, c = (new(server, clients, n) for n in ("big", "calm", "quiet"))
    for x in (a, b, c):
        x.join("#big")
    max_frame = a.received[0]["limits"]["max_frame"]
    # Exactly max_frame is a frame like any other (here: its text is too long).
    filler = b"x" * 16
    body = msgpack.packb({"type": "msg", "room": "#big", "text": "", "label": 1})
    pad = max_frame - len(body) - 2  # a str16 header (3 bytes) replaces fixstr "" (1)
    payload = msgpack.packb({"type": "msg", "room": "#big", "text": "y" * pad, "label": 1})
    assert len(payload) == max_frame, (len(payload), max_frame)
    a.send_raw(frame(payload))
    assert a.reply(1)["code"] == "text_too_long"
    # One byte more is a framing error: fatal, and the server closes the connection.
    a.send_raw(struct.pack(">I", max_frame + 1) + filler)
    frames = a.wait_closed()
    errors = [f for f in frames if f.get("type") == "error"]
    assert errors and errors[-1]["code"] == "frame_too_large", frames
    assert errors[-1]["fatal"] is True and errors[-1].get("limit") == "max_frame"
    assert frames[-1] is errors[-1], "the fatal error must be the last frame"
    # The others carry on and are told the user left.
    for x in (b, c):
        note = x.wait_type("quit", nick="big")
        assert note["room"] == "#big" and note["reason"], note
    ack = b.say("#big", "still here")
    assert c.wait_type("message", id=ack["id"])["from"] == "calm"


def test_huge_declared_length_is_refused_without_waiting_for_the_body(server, clients):
    a = new(server, clients)
    a.send_raw(b"\xff\xff\xff\xff")
    frames = a.wait_closed()
    assert frames and frames[-1]["code"] == "frame_too_large", frames


def test_rate_limit_and_handshake_timeout(tmp_path):
    srv = ServerProcess(tmp_path, {"rate": {"msg_rate": 0.01, "msg_burst": 3},
                                   "keepalive": {"handshake_timeout": 0.5}}).start()
    try:
        a = connect(srv, "limited")
        a.join("#rl")
        for i in range(3):
            a.say("#rl", f"burst {i}")
        err = a.error({"type": "msg", "room": "#rl", "text": "one too many"})
        assert err["code"] == "rate_limited" and err["fatal"] is False, err
        assert err["limit"] == "msg_rate" and err["retry_after"] > 0, err
        assert_alive(a)  # ping is never rate limited
        # A connection that never says hello is closed after handshake_timeout.
        b = connect(srv)
        frames = b.wait_closed(timeout=10)
        assert [(f["type"], f["code"], f["fatal"]) for f in frames] == \
            [("error", "handshake_timeout", True)], frames
        assert_alive(a)
        a.close()
    finally:
        assert srv.stop() == 0
