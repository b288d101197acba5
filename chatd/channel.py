"""Framing of the parent <-> session channel (a socketpair per session).

Parent -> session: envelopes of a 1-byte kind and a 4-byte big-endian length.
RAW envelopes hold already-encoded client frames, which the session forwards
to its client untouched (no per-message work in the session); CTRL envelopes
hold one msgpack map for the session process itself.

Session -> parent: ordinary protocol frames (chatd.protocol), re-encoded by
the session from validated fields only, so the parent never sees client bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import Any

import msgpack

ENVELOPE = struct.Struct(">BI")
RAW, CTRL = 0, 1
# Requests whose replies can be large. The broker follows its answer to each (reply or
# error) with the DONE control, so a session can keep few of them in flight.
CATCHUP = frozenset({"join", "history"})
DONE: dict[str, Any] = {"c": "done"}


def encode_items(items: Iterable[bytes | dict[str, Any]]) -> bytes:
    """Encode a queue of raw frames and controls, coalescing adjacent raw frames."""
    parts: list[bytes] = []
    raw: list[bytes] = []
    for item in items:
        if isinstance(item, bytes):
            raw.append(item)
            continue
        if raw:
            parts.append(_raw(raw))
            raw = []
        body = msgpack.packb(item, use_bin_type=True)
        parts.append(ENVELOPE.pack(CTRL, len(body)) + body)
    if raw:
        parts.append(_raw(raw))
    return b"".join(parts)


def _raw(frames: list[bytes]) -> bytes:
    body = frames[0] if len(frames) == 1 else b"".join(frames)
    return ENVELOPE.pack(RAW, len(body)) + body


def control(item: dict[str, Any]) -> bytes:
    return encode_items([item])


class EnvelopeReader:
    """Splits the parent's stream into (kind, body) pairs."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    def buffered(self) -> bool:
        """Whether bytes of a partial envelope are waiting for more."""
        return bool(self._buf)

    def leftover(self) -> bytes:
        """Bytes not yet returned as envelopes (taken out of the reader)."""
        out = bytes(self._buf)
        self._buf.clear()
        return out

    def envelopes(self) -> Iterator[tuple[int, bytes]]:
        buf = self._buf
        pos = 0
        try:
            while len(buf) - pos >= ENVELOPE.size:
                kind, size = ENVELOPE.unpack_from(buf, pos)
                end = pos + ENVELOPE.size + size
                if end > len(buf):
                    break
                yield kind, bytes(buf[pos + ENVELOPE.size : end])
                pos = end
        finally:
            del buf[:pos]


def decode_control(body: bytes) -> dict[str, Any]:
    obj = msgpack.unpackb(body, raw=False)
    if not isinstance(obj, dict):
        raise ValueError("control is not a map")
    return obj
