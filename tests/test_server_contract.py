"""protocol.md's answers to a client author's questions, pinned against the real server.

Which error each way of failing gets (and in which order the checks run), what counts as
white space, the server's ping token, how connection caps and rate buckets count, and
which keys `welcome.limits` carries. Each statement here is one protocol.md makes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from serverproc import FAST, ServerProcess, wait_until
from wire import Client, Frame, connect

from chatd import protocol as p
from chatd.config import BY_KEY, Config

DOC = (Path(__file__).parent.parent / "protocol.md").read_text()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("contract"),
                        {**FAST, "limits": {"max_rooms": 2}}).start()
    yield srv
    assert srv.stop() == 0
    assert "Traceback" not in "\n".join(srv.lines)


@pytest.fixture(scope="module")
def alice(server: ServerProcess) -> Iterator[Client]:
    """In #in (and so at max_rooms = 2 with #in2); bob is online, in #in."""
    client = connect(server, "alice")
    client.join("#in")
    client.join("#in2")
    bob = connect(server, "bob")
    bob.join("#in")
    bob.join("#bobs")
    yield client
    client.close()
    bob.close()


BAD_TOPIC = "tab\x07"
# (request, code): each is one documented way to fail; where two checks fail, the one
# protocol.md §6 says comes first must win.
ERROR_CASES: list[tuple[Frame, str]] = [
    # the frame itself: label before fields, fields in the order of the §4 table
    ({"type": "frobnicate", "label": None}, "unknown_type"),
    ({"type": "msg", "label": 1.5}, "wrong_type"),
    ({"type": "msg", "room": 5}, "wrong_type"),
    ({"type": "msg", "room": "#in"}, "missing_field"),
    ({"type": "msg", "text": "hi"}, "missing_field"),
    ({"type": "msg", "room": "#in", "to": "bob", "text": "hi"}, "invalid_value"),
    ({"type": "join", "room": "#in", "after": 2**63}, "invalid_value"),
    ({"type": "history"}, "missing_field"),
    ({"type": "history", "room": "#in", "with": "bob"}, "invalid_value"),
    ({"type": "history", "room": "#in", "before": 1, "after": 1}, "invalid_value"),
    ({"type": "ping", "token": 1.5}, "wrong_type"),
    # hello
    ({"type": "hello", "version": 1, "nick": "alice"}, "already_registered"),
    # join
    ({"type": "join", "room": "in"}, "invalid_room"),
    ({"type": "join", "room": "#third"}, "too_many_rooms"),
    # part: room, then membership, then reason
    ({"type": "part", "room": "in", "reason": BAD_TOPIC}, "invalid_room"),
    ({"type": "part", "room": "#bobs", "reason": BAD_TOPIC}, "not_in_room"),
    ({"type": "part", "room": "#in", "reason": BAD_TOPIC}, "invalid_value"),
    # msg: the text first, then the target
    ({"type": "msg", "room": "in", "text": " \t\n\u3000"}, "text_empty"),
    ({"type": "msg", "room": "in", "text": "x" * 4001}, "text_too_long"),
    ({"type": "msg", "room": "in", "text": "bell\x07"}, "invalid_value"),
    ({"type": "msg", "room": "in", "text": "hi"}, "invalid_room"),
    ({"type": "msg", "room": "#bobs", "text": "hi"}, "not_in_room"),
    ({"type": "msg", "to": "9lives", "text": "hi"}, "invalid_nick"),
    ({"type": "msg", "to": "nobody", "text": "hi"}, "no_such_nick"),
    # nick
    ({"type": "nick", "nick": "-x"}, "invalid_nick"),
    ({"type": "nick", "nick": "BOB"}, "nick_taken"),
    # topic: get, then set
    ({"type": "topic", "room": "in"}, "invalid_room"),
    ({"type": "topic", "room": "#empty"}, "no_such_room"),
    ({"type": "topic", "room": "in", "topic": BAD_TOPIC}, "invalid_room"),
    ({"type": "topic", "room": "#bobs", "topic": BAD_TOPIC}, "not_in_room"),
    ({"type": "topic", "room": "#in", "topic": BAD_TOPIC}, "invalid_value"),
    # rooms, who
    ({"type": "rooms", "after": "in"}, "invalid_room"),
    ({"type": "who", "room": "in", "after": "9"}, "invalid_room"),
    ({"type": "who", "room": "#empty", "after": "9"}, "no_such_room"),
    ({"type": "who", "room": "#bobs", "after": "9"}, "invalid_nick"),
    # history: limit, then the target
    ({"type": "history", "room": "in", "limit": 0}, "invalid_value"),
    ({"type": "history", "room": "in"}, "invalid_room"),
    ({"type": "history", "room": "#bobs"}, "not_in_room"),
    ({"type": "history", "with": "9lives"}, "invalid_nick"),
]


@pytest.mark.parametrize(("req", "code"), ERROR_CASES,
                         ids=[f"{r['type']}-{c}-{i}" for i, (r, c) in enumerate(ERROR_CASES)])
def test_each_way_to_fail_gets_its_documented_code(alice: Client, req: Frame,
                                                  code: str) -> None:
    assert f"`{code}`" in DOC.split("## 6.")[1]
    label = "label" not in req
    if label:
        err = alice.call(req)
    else:  # an invalid label: the error cannot carry one
        alice.send(req)
        err = alice.wait_type("error")
    assert (err["type"], err["code"], err["fatal"]) == ("error", code, False), err
    assert ("label" in err) == label
    alice.sync()  # and the session goes on


def test_requests_before_welcome(server: ServerProcess) -> None:
    c = Client(server.host, server.port)
    try:
        assert c.error({"type": "who", "room": "#in"})["code"] == "not_registered"
        assert c.error({"type": "hello", "version": 2, "nick": "9"})["code"] == \
            "unsupported_version"
        assert c.error({"type": "hello", "version": 1, "nick": "9"})["code"] == "invalid_nick"
        assert c.error({"type": "hello", "version": 1, "nick": "ALICE"})["code"] == \
            "nick_taken"
        assert c.call({"type": "ping", "token": "t"})["type"] == "pong"
    finally:
        c.close()


def test_white_space_is_the_unicode_white_space_set() -> None:
    """§3: a text of only these characters is `text_empty`; a control character that is
    not white space (U+001C..U+001F) is `invalid_value`, not white space."""
    spaces = "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) \
        + "\u2028\u2029\u202f\u205f\u3000"
    assert frozenset(spaces) == p.WHITE_SPACE
    for ch in spaces:
        with pytest.raises(p.ProtocolError) as info:
            p.check_text(ch * 3, 100)
        assert info.value.code == "text_empty", hex(ord(ch))
    for text in ("\x1c", "\x1f"):  # control characters, not white space
        with pytest.raises(p.ProtocolError) as info:
            p.check_text(text, 100)
        assert info.value.code == "invalid_value", hex(ord(text))


def test_the_order_of_the_text_checks() -> None:
    """§3: empty or only white space, then too long, then a forbidden character."""
    for text, code in ((" " * 200, "text_empty"), ("\x07" * 200, "text_too_long"),
                       ("\x07", "invalid_value")):
        with pytest.raises(p.ProtocolError) as info:
            p.check_text(text, 100)
        assert info.value.code == code


def test_the_server_s_ping_token_is_an_int(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path, {"keepalive": {"ping_interval": 0.2,
                                                 "ping_timeout": 10.0}}).start()
    try:
        c = connect(srv, "quiet")
        tokens = []
        for _ in range(2):
            ping = c.wait_type("ping", timeout=10)
            tokens.append(ping["token"])
            c.send({"type": "pong", "token": ping["token"]})
        assert all(type(t) is int for t in tokens) and tokens[0] < tokens[1], tokens
    finally:
        assert srv.stop() == 0


def test_connection_caps_count_connections_that_have_not_said_hello(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path, {"limits": {"max_sessions_per_ip": 2,
                                              "max_sessions": 100}}).start()
    try:
        silent = [Client(srv.host, srv.port) for _ in range(2)]
        wait_until(lambda: len(srv.children()) == 2, message="two session processes")
        frames = Client(srv.host, srv.port).wait_closed(timeout=10)
        assert [f["code"] for f in frames] == ["too_many_connections"], frames
        silent[0].close()  # its slot is free once its process has ended
        wait_until(lambda: len(srv.children()) == 1, message="the closed one to be reaped")
        connect(srv, "late").sync()
    finally:
        assert srv.stop() == 0


def test_rate_buckets_are_per_connection_and_each_frame_costs_one_token(
        tmp_path: Path) -> None:
    """§7: three buckets per connection; a request is charged to its own bucket once,
    even when it is then refused (`not_registered`); a bad frame costs a `cmd` token."""
    srv = ServerProcess(tmp_path, {"rate": {"cmd_rate": 0.01, "cmd_burst": 2,
                                            "history_rate": 0.01, "history_burst": 3}}).start()
    try:
        c = Client(srv.host, srv.port)
        for _ in range(3):  # history tokens, not cmd tokens
            assert c.error({"type": "join", "room": "#a"})["code"] == "not_registered"
        err = c.error({"type": "join", "room": "#a"})
        assert (err["code"], err["limit"]) == ("rate_limited", "history_rate"), err
        c.hello("first")  # cmd token 1 of 2
        assert c.error({"type": "who", "room": "#nowhere"})["code"] == "no_such_room"
        err = c.error({"type": "rooms"})
        assert (err["code"], err["limit"]) == ("rate_limited", "cmd_rate"), err
        err = c.error({"type": "frobnicate"})  # a bad frame: the cmd bucket is empty
        assert (err["code"], err["limit"]) == ("rate_limited", "cmd_rate"), err
        assert c.call({"type": "ping"})["type"] == "pong"  # never limited
        other = connect(srv, "second")  # another connection, same address: full buckets
        assert other.error({"type": "frobnicate"})["code"] == "unknown_type"
        assert other.error({"type": "rooms"})["code"] == "rate_limited"
    finally:
        assert srv.stop() == 0


def test_welcome_limits_are_the_documented_ones() -> None:
    example = re.search(r"### `welcome`\n```\n(.*?)\n```", DOC, re.S)
    assert example is not None
    documented = json.loads(example.group(1))["limits"]
    assert set(documented) == set(Config().limits())
    section7 = DOC.split("## 7.")[1].split("## 8.")[0]
    for key in documented:
        assert f"`{key}`" in section7, key


def test_every_setting_named_in_section_7_exists() -> None:
    section7 = DOC.split("## 7.")[1].split("## 8.")[0]
    named = set(re.findall(r"^\| `(\w+)`", section7, re.M))
    named |= set(re.findall(r"^\| `\w+`, `(\w+)`", section7, re.M))
    keys = {s.key for s in BY_KEY.values()} | {s.name for s in BY_KEY.values()}
    assert named and named <= keys, named - keys
