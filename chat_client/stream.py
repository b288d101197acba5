"""The byte stream a `Connection` runs over, and how to open one.

Like httpcore's network streams: the connection takes an `Opener` as an argument and
knows nothing of sockets, so tests hand it an in-memory stream instead of a server. The
TCP implementation is the thin one used for real.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

CONNECT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 1.0  # at most this long waiting for a closed socket to be released


class Stream(Protocol):
    async def read(self, max_bytes: int) -> bytes:
        """Some bytes, or b"" at end of stream. Raises OSError when the link fails."""
        ...

    def write(self, data: bytes) -> None:
        """Queue bytes to send (no waiting); dropped once the stream is closing."""
        ...

    async def aclose(self) -> None:
        """Close; bounded, never raises."""
        ...


class Opener(Protocol):
    peer: str  # what it connects to, for messages ("host:port")

    async def __call__(self) -> Stream:
        """A new open stream. Raises OSError or TimeoutError when that fails."""
        ...


class TCPStream:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def read(self, max_bytes: int) -> bytes:
        return await self.reader.read(max_bytes)

    def write(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), CLOSE_TIMEOUT)


class TCPOpener:
    def __init__(self, host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.peer = f"{host}:{port}"

    async def __call__(self) -> Stream:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port),
                                                self.timeout)
        return TCPStream(reader, writer)
