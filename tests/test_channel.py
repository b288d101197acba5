"""The parent <-> session channel envelopes."""

from __future__ import annotations

from chatd.channel import CTRL, RAW, EnvelopeReader, decode_control, encode_items
from chatd.protocol import pack


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
