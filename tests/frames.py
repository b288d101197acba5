"""Helpers to read what the sans-I/O cores produce, and to answer the broker's reads."""

from __future__ import annotations

from typing import Any

from chatd.broker import Broker
from chatd.protocol import FrameDecoder, decode_payload
from chatd.reader import answer
from chatd.store import Store


def decode_all(data: bytes) -> list[dict[str, Any]]:
    decoder = FrameDecoder(max_frame=1 << 24)
    decoder.receive_data(data)
    frames = [decode_payload(p) for p in decoder.payloads()]
    assert decoder.buffered == 0, "trailing partial frame"
    return frames


def answer_reads(broker: Broker, reader: Store | None = None) -> None:
    """Answer the broker's history reads, and the reads those lead to, as the reader
    process does: after a commit, with chatd.reader's own code, through `reader` (a
    read-only Store on the same file), or through the broker's store for an in-memory
    database."""
    store = reader or broker.store
    while True:
        broker.store.flush()
        reads = broker.take_reads()
        if not reads:
            return
        for _sid, read in reads:
            broker.read_done(answer(store, read))
