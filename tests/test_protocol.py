"""Frame codec and request validation, without sockets."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgpack
import pytest

from chatd import protocol as p
from chatd.protocol import FrameDecoder, ProtocolError, decode_payload, pack, validate_request


def test_pack_matches_the_documented_example() -> None:
    assert pack({"type": "ping"}).hex(" ") == "00 00 00 0b 81 a4 74 79 70 65 a4 70 69 6e 67"


def test_decoder_handles_split_and_coalesced_frames() -> None:
    data = pack({"type": "a"}) + pack({"type": "b", "x": "y" * 1000})
    decoder = FrameDecoder()
    got = []
    for i in range(0, len(data), 7):
        decoder.receive_data(data[i : i + 7])
        got += [decode_payload(x)["type"] for x in decoder.payloads()]
    assert got == ["a", "b"]
    assert decoder.buffered == 0


def test_oversized_header_is_fatal_before_the_body_arrives() -> None:
    decoder = FrameDecoder(max_frame=100)
    decoder.receive_data(b"\x00\x00\x00\x65")
    with pytest.raises(ProtocolError) as info:
        list(decoder.payloads())
    assert info.value.code == "frame_too_large" and info.value.fatal
    assert info.value.limit == "max_frame"


@pytest.mark.parametrize(("payload", "code"), [
    (b"", "malformed"),
    (b"\xc1", "malformed"),
    (msgpack.packb({"type": "a"}) + b"\x00", "malformed"),
    (b"\x81\xa4type\xa2\xff\xfe", "invalid_utf8"),
    (msgpack.packb([1, 2]), "not_a_map"),
    (msgpack.packb({"type": 3}), "not_a_map"),
    (msgpack.packb({"nope": "x"}), "not_a_map"),
])
def test_bad_payloads_get_codes(payload: bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_payload(payload)
    assert info.value.code == code and not info.value.fatal


@pytest.mark.parametrize(("req", "code"), [
    ({"type": "dance"}, "unknown_type"),
    ({"type": "hello", "nick": "a"}, "missing_field"),
    ({"type": "hello", "version": "1", "nick": "a"}, "wrong_type"),
    ({"type": "hello", "version": True, "nick": "a"}, "wrong_type"),
    ({"type": "msg", "text": "x"}, "missing_field"),
    ({"type": "msg", "room": "#a", "to": "b", "text": "x"}, "invalid_value"),
    ({"type": "msg", "room": "#a", "text": "x", "action": 1}, "wrong_type"),
    ({"type": "history", "room": "#a", "before": 1, "after": 2}, "invalid_value"),
    ({"type": "rooms", "label": [1]}, "wrong_type"),
    ({"type": "rooms", "label": "x" * 65}, "wrong_type"),
])
def test_request_validation(req: dict, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        validate_request(req)
    assert info.value.code == code


def test_valid_requests_pass_unchanged() -> None:
    req = {"type": "msg", "room": "#a", "text": "hi", "label": "m1", "extra": 1}
    assert validate_request(req) is req


def test_parse_request_gives_the_request_and_its_label() -> None:
    req = {"type": "msg", "room": "#a", "text": "hi", "label": "m1"}
    assert p.parse_request(msgpack.packb(req)) == (req, "m1")
    assert p.parse_request(msgpack.packb({"type": "rooms"})) == ({"type": "rooms"}, None)


@pytest.mark.parametrize(("payload", "code", "label"), [
    (b"\xc1", "malformed", None),
    (msgpack.packb([1]), "not_a_map", None),
    (msgpack.packb({"type": "dance", "label": 3}), "unknown_type", 3),
    (msgpack.packb({"type": "join", "room": 1, "label": "j"}), "wrong_type", "j"),
    (msgpack.packb({"type": "join", "room": "#a", "label": [1]}), "wrong_type", None),
])
def test_parse_request_refusals_carry_the_label(payload: bytes, code: str, label: Any) -> None:
    """The error answers the request it refuses: with its label, when that was valid."""
    with pytest.raises(ProtocolError) as info:
        p.parse_request(payload)
    assert (info.value.code, info.value.label) == (code, label)
    frame = msgpack.unpackb(p.error_from(info.value)[4:])
    assert frame.get("label") == label and frame["code"] == code


def test_parse_request_always_parses_a_quit() -> None:
    """A quit ends the session whatever it holds (protocol.md §4): a field of the wrong
    type is dropped, for the session process and the broker alike."""
    quit = {"type": "quit", "reason": 5, "label": None, "code": "flood"}
    assert p.parse_request(msgpack.packb(quit)) == ({"type": "quit", "label": None,
                                                    "code": "flood"}, None)
    quit = {"type": "quit", "reason": "bye", "label": 2}
    assert p.parse_request(msgpack.packb(quit)) == (quit, 2)


@pytest.mark.parametrize(("rtype", "registered", "code"), [
    ("join", False, "not_registered"), ("hello", False, None), ("ping", False, None),
    ("quit", False, None), ("hello", True, "already_registered"), ("join", True, None),
    ("hello", None, None), ("join", None, None),
])
def test_check_registration(rtype: str, registered: bool | None, code: str | None) -> None:
    if code is None:
        p.check_registration(rtype, registered)
        return
    with pytest.raises(ProtocolError) as info:
        p.check_registration(rtype, registered)
    assert info.value.code == code


@pytest.mark.parametrize("nick", ["a", "Alice", "_x", "[bot]", "a-b", "x" * 30])
def test_good_nicks(nick: str) -> None:
    assert p.check_nick(nick) == nick


@pytest.mark.parametrize("nick", ["", "1a", "-a", "a b", "é", "x" * 31, "a\n"])
def test_bad_nicks(nick: str) -> None:
    with pytest.raises(ProtocolError, match="nick"):
        p.check_nick(nick)


def test_rooms_are_case_insensitive_and_checked() -> None:
    assert p.check_room("#General") == "#general"
    for bad in ("general", "#", "#a b", "#" + "a" * 50, "#é"):
        with pytest.raises(ProtocolError):
            p.check_room(bad)


def test_text_rules() -> None:
    assert p.check_text("two\nlines\tok", 100)
    for text, code in (("", "text_empty"), ("  \n", "text_empty"), ("é" * 51, "text_too_long"),
                       ("bell\x07", "invalid_value"), ("esc\x1b[2J", "invalid_value"),
                       ("c1\x9b", "invalid_value")):
        with pytest.raises(ProtocolError) as info:
            p.check_text(text, 100)
        assert info.value.code == code


def test_every_error_code_is_documented() -> None:
    doc = (Path(__file__).parent.parent / "protocol.md").read_text()
    table = dict(re.findall(r"^\| `(\w+)` \| (yes|no) \|", doc, re.M))
    assert set(table) == set(p.ERRORS)
    for code, (fatal, _meaning) in p.ERRORS.items():
        assert table[code] == ("yes" if fatal else "no"), code


def test_every_request_type_is_documented() -> None:
    doc = (Path(__file__).parent.parent / "protocol.md").read_text()
    documented = set(re.findall(r"^\| `(\w+)` \| ", doc.split("## 5.")[0].split("## 4.")[1],
                                re.M))
    assert documented == set(p.SCHEMAS)


def test_the_documented_nick_rule_is_the_code_s() -> None:
    doc = (Path(__file__).parent.parent / "protocol.md").read_text()
    documented = re.search(r"``(\[A-Za-z_.*?\{0,29\})``", doc)
    assert documented is not None
    assert documented.group(1) + r"\Z" == p.NICK_RE.pattern
