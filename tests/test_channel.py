"""The parent <-> session channel envelopes (chatd/channel.py): encoded by the parent,
cut anywhere by the socket, parsed whole and in order by the session's EnvelopeReader."""

from __future__ import annotations

from typing import Any

from fakesock import TrickleSocket
from hypothesis import given, settings
from hypothesis import strategies as st

from chatd import channel
from chatd.channel import CTRL, ENVELOPE, RAW, EnvelopeReader, decode_control, encode_items
from chatd.outbox import Outbox
from chatd.protocol import pack

ITEMS = st.lists(st.one_of(
    st.builds(lambda n: pack({"type": "message", "text": "x" * n}), st.integers(0, 200)),
    st.builds(lambda c, n: {"c": c, "n": n}, st.sampled_from(["close", "done", "config"]),
              st.integers(0, 2**40))), min_size=1, max_size=20)


def test_adjacent_raw_frames_coalesce_and_order_is_kept() -> None:
    a, b, c = pack({"type": "a"}), pack({"type": "b"}), pack({"type": "c"})
    data = encode_items([a, b, {"c": "state", "nick": "x"}, c])
    reader = EnvelopeReader()
    got = []
    for i in range(0, len(data), 3):  # byte-by-byte-ish arrival
        got += reader.feed(data[i : i + 3])
    assert [k for k, _ in got] == [RAW, CTRL, RAW]
    assert got[0][1] == a + b and got[2][1] == c
    assert decode_control(got[1][1]) == {"c": "state", "nick": "x"}


def expected(items: list[bytes | dict[str, Any]]) -> list[tuple[int, Any]]:
    """What the session should get: adjacent raw frames as one envelope, controls alone."""
    out: list[tuple[int, Any]] = []
    for item in items:
        if isinstance(item, dict):
            out.append((CTRL, item))
        elif out and out[-1][0] == RAW:
            out[-1] = (RAW, out[-1][1] + item)
        else:
            out.append((RAW, item))
    return out


@settings(max_examples=300, deadline=None)
@given(ITEMS, st.integers(1, 64), st.integers(1, 64))
def test_envelopes_come_whole_and_in_order_however_the_stream_is_cut(
        items: list[bytes | dict[str, Any]], k_send: int, k_recv: int) -> None:
    data = encode_items(items)
    parent, wire = Outbox(), TrickleSocket(k_send)  # the parent's side sends k_send at a time
    parent.add(data)
    reader = EnvelopeReader()
    got: list[tuple[int, Any]] = []
    received = 0
    while parent.chunks or wire.wire:
        if parent.chunks:
            parent.send(wire)  # type: ignore[arg-type]
        chunk = wire.recv(k_recv)  # the session reads what is there, k_recv at most
        received += len(chunk)
        for kind, body in reader.feed(chunk):
            got.append((kind, decode_control(body) if kind == CTRL else bytes(body)))
        # Bytes wait in the reader exactly while an envelope is incomplete.
        assert reader.buffered() == (received not in boundaries(data))
    assert got == expected(items)
    assert not reader.buffered()


def boundaries(data: bytes) -> set[int]:
    """Offsets in `data` where one envelope ends and the next begins."""
    out, pos = {0}, 0
    while pos < len(data):  # by the headers alone, not by the reader under test
        pos += ENVELOPE.size + ENVELOPE.unpack_from(data, pos)[1]
        out.add(pos)
    return out


def test_a_partial_envelope_waits_in_the_reader_handed_over_with_it() -> None:
    """A spare hands its reader, partial envelope and all, to the session loop."""
    hand_over = channel.client("t0k3n", "192.0.2.1")
    data = encode_items([hand_over, pack({"type": "a"})])
    reader = EnvelopeReader()
    ((kind, body),) = reader.feed(data[:-2])
    assert kind == CTRL and decode_control(body) == hand_over
    assert reader.buffered()
    ((kind, body),) = reader.feed(data[-2:])
    assert kind == RAW and bytes(body) == pack({"type": "a"}) and not reader.buffered()
