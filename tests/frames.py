"""Helpers to read what the sans-I/O cores produce."""

from __future__ import annotations

from typing import Any

from chatd.protocol import FrameDecoder, decode_payload


def decode_all(data: bytes) -> list[dict[str, Any]]:
    decoder = FrameDecoder(max_frame=1 << 24)
    decoder.receive_data(data)
    frames = [decode_payload(p) for p in decoder.payloads()]
    assert decoder.buffered == 0, "trailing partial frame"
    return frames
