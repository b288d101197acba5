"""Unit tests of what a session keeps to be adopted by a next parent (chatd/orphan.py)."""

from __future__ import annotations

import os

import pytest

from chatd import channel, orphan
from chatd.outbox import Outbox
from chatd.protocol import pack


def message(msg_id: int, room: str = "#r") -> bytes:
    """A `message` frame exactly as the broker packs it (field order included)."""
    return pack({"type": "message", "id": msg_id, "ts": 1, "room": room, "from": "a",
                 "text": "hi", "action": False})


@pytest.mark.parametrize("msg_id", [1, 127, 128, 255, 256, 65535, 65536, 2**32, 2**40])
def test_delivered_reads_the_id_of_every_size_without_decoding(msg_id: int) -> None:
    seen = orphan.Delivered()
    seen.feed(memoryview(pack({"type": "joined", "room": "#r"}) + message(msg_id)))
    assert seen.last == msg_id


def test_delivered_keeps_the_newest_and_skips_other_frames() -> None:
    seen = orphan.Delivered()
    seen.feed(message(7) + pack({"type": "ack", "id": 99, "ts": 1, "room": "#r"}))
    assert seen.last == 7  # an ack's id is not a delivery
    seen.feed(message(5))
    assert seen.last == 7  # never back
    seen.feed(message(8) + message(9) + pack({"type": "join", "room": "#r"}))
    assert seen.last == 9
    seen.feed(pack({"type": "message", "id": 11, "ts": 1, "room": "#r", "from": "a",
                    "text": "\xa4type\xa7message\xa2id\x7f", "action": False}))
    assert seen.last == 11  # text cannot fake one (it is UTF-8 on the wire)


def test_delivered_compares_ids_across_their_encodings() -> None:
    seen = orphan.Delivered()  # (it keeps encodings, compared as bytes)
    for msg_id, newest in [(127, 127), (128, 128), (100, 128), (255, 255), (256, 256),
                           (200, 256), (65536, 65536), (65535, 65536), (2**32, 2**32),
                           (2**32 - 1, 2**32), (7, 2**32)]:
        seen.feed(message(msg_id))
        assert seen.last == newest


@pytest.mark.parametrize("msg_id", [1, 127, 128, 65536, 2**32, 2**40])
def test_a_lone_message_envelope_gives_its_id_in_place(msg_id: int) -> None:
    """The session's steady loop reads a RAW envelope of one message frame with
    ONE_MESSAGE and offers the id's encoding: the same as searching the body."""
    frame = message(msg_id)
    envelope = channel.encode_items([frame]) + b"\0" * 64  # (the buffer runs on)
    kind, length, size, marker, code = orphan.ONE_MESSAGE.unpack_from(envelope)
    assert (kind, length, size) == (channel.RAW, len(frame), len(frame) - 4)
    assert marker == orphan.MESSAGE_MARK
    offered, searched = orphan.Delivered(), orphan.Delivered()
    offered.offer(code)
    searched.feed(frame)
    assert offered.last == searched.last == msg_id
    offered.offer(orphan.ONE_MESSAGE.unpack_from(channel.encode_items([message(1)]))[4])
    assert offered.last == msg_id  # never back
    offered.offer(b"\xa3abc" + bytes(5))  # no unsigned integer (a str): not kept
    assert offered.last == msg_id


def test_restart_drops_the_request_the_old_parent_got_part_of() -> None:
    first, second = pack({"type": "msg", "text": "a"}), pack({"type": "msg", "text": "b"})
    out = Outbox()
    out.add(first + second)
    out.offset, out.size = 3, len(first + second) - 3  # 3 bytes of `first` went out
    orphan.restart(out, b"REG")
    assert b"".join(bytes(c) for c in out.chunks) == b"REG" + second
    assert out.offset == 0 and out.size == 3 + len(second)


def test_a_state_is_valid_only_for_the_pid_and_token_it_was_signed_for() -> None:
    key = os.urandom(32)
    state = orphan.signed_state(key, 42, "tok", "alice", None, ["#b", "#a"])
    assert state["rooms"] == ["#a", "#b"]
    assert orphan.state_valid(key, 42, "tok", state)
    assert not orphan.state_valid(key, 43, "tok", state)
    assert not orphan.state_valid(key, 42, "other", state)
    assert not orphan.state_valid(os.urandom(32), 42, "tok", state)
    assert not orphan.state_valid(key, 42, "tok", {**state, "nick": "mallory"})
    assert not orphan.state_valid(key, 42, "tok", {**state, "account": "root"})


def test_the_key_is_made_once_0600_and_kept(tmp_path) -> None:
    key = orphan.load_key(tmp_path)
    assert len(key) == 32 and orphan.load_key(tmp_path) == key
    assert (tmp_path / orphan.KEY_FILE).stat().st_mode & 0o777 == 0o600


def test_a_session_process_forgets_the_key() -> None:
    orphan.KEY[:] = b"secret" * 6
    orphan.forget_key()
    assert bytes(orphan.KEY) == bytes(36)
    orphan.KEY[:] = b""


def test_the_resume_secret_is_believed_only_as_signed_for_that_process() -> None:
    key = os.urandom(32)
    state = orphan.signed_state(key, 42, "tok", "alice", None, ["#a"], "f" * 32)
    assert orphan.state_valid(key, 42, "tok", state)
    assert orphan.resume_secret(key, 42, "tok", state) == "f" * 32
    assert orphan.resume_secret(key, 43, "tok", state) == ""
    assert orphan.resume_secret(key, 42, "other", state) == ""
    assert orphan.resume_secret(key, 42, "tok", {**state, "resume": "0" * 32}) == ""
    # a session running older code shows only what `sig` covers: adopted, not resumable
    older = {k: state[k] for k in ("nick", "account", "rooms", "sig")}
    assert orphan.state_valid(key, 42, "tok", older)
    assert orphan.resume_secret(key, 42, "tok", older) == ""


def test_delivered_takes_the_state_s_upto_only_forward() -> None:
    seen = orphan.Delivered()
    seen.upto(40)
    seen.feed(pack({"type": "message", "id": 7, "room": "#r"}))
    assert seen.last == 40
    for junk in (None, "50", 3):
        seen.upto(junk)
    assert seen.last == 40
