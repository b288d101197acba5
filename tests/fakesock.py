"""A non-blocking socket stand-in that takes at most k bytes per call.

The kernel may accept any part of what send() or sendmsg() offers, and recv() may return
any part of what is there; code that moves bytes between sockets must survive every cut.
This plays the worst case, k bytes at a time, and a send buffer of `room` bytes that is
full (BlockingIOError) until the peer reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from chatd.outbox import IOV_MAX


class TrickleSocket:
    def __init__(self, k: int, room: int | None = None) -> None:
        assert k >= 1
        self.k, self.room = k, room
        self.wire = bytearray()  # sent, not yet read by the peer
        self.options: list[tuple[int, int, Any]] = []  # setsockopt calls, in order
        self.sends = 0

    def sendmsg(self, buffers: Sequence[bytes | memoryview]) -> int:
        assert 0 < len(buffers) <= IOV_MAX, len(buffers)  # the kernel refuses more
        free = self.k if self.room is None else min(self.k, self.room - len(self.wire))
        if free <= 0:
            raise BlockingIOError
        self.sends += 1
        taken = bytearray()
        for buf in buffers:
            taken += bytes(buf[: free - len(taken)])
            if len(taken) == free:
                break
        self.wire += taken
        return len(taken)

    def send(self, data: bytes | memoryview) -> int:
        return self.sendmsg([data])

    def recv(self, size: int) -> bytes:
        """What the peer reads: at most k bytes (b"" when nothing was sent)."""
        n = min(size, self.k, len(self.wire))
        out = bytes(self.wire[:n])
        del self.wire[:n]
        return out

    def drain(self) -> bytes:
        """Everything sent so far, as the peer would read it."""
        out = bytes(self.wire)
        self.wire.clear()
        return out

    def setsockopt(self, level: int, option: int, value: Any) -> None:
        self.options.append((level, option, value))
