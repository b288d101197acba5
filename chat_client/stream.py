"""The byte stream a `Connection` runs over, and how to open one.

Like httpcore's network streams: the connection takes an `Opener` as an argument and
knows nothing of sockets, so tests hand it an in-memory stream instead of a server. The
TCP and TLS implementations are the thin ones used for real (trust.py decides whom TLS
trusts).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from typing import Protocol

from .lifecycle import ConnectError, TLSRefused

CONNECT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 1.0  # at most this long waiting for a closed socket to be released
# OpenSSL's reasons when what answered a TLS handshake was not TLS (a plain-TCP port).
PLAIN_REPLY = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE",
                         "PACKET_LENGTH_TOO_LONG"})


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


class TLSOpener:
    """TLS over TCP. `context` says whom to trust; `check`, when given, sees the server's
    certificate (DER) after the handshake and raises to refuse it. A certificate the
    context does not trust ends the connection for good (TLSRefused), its message
    followed by `hint` (what to do about it). `on_refused` hears every TLSRefused first
    (the full-screen client shows it: nothing else would once retrying stops)."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext,
                 check: Callable[[bytes], None] | None = None, hint: str = "",
                 on_refused: Callable[[str], None] | None = None,
                 timeout: float = CONNECT_TIMEOUT) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.context, self.check, self.hint = context, check, hint
        self.on_refused = on_refused
        self.peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def __call__(self) -> Stream:
        try:
            return await self._open()
        except TLSRefused as exc:
            if self.on_refused is not None:
                self.on_refused(str(exc))
            raise

    async def _open(self) -> Stream:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                self.host, self.port, ssl=self.context, server_hostname=self.host,
                ssl_handshake_timeout=self.timeout), self.timeout)
        except ssl.SSLCertVerificationError as exc:
            raise TLSRefused(f"cannot connect to {self.peer}: its TLS certificate is not "
                             f"trusted: {exc.verify_message}{self.hint}") from exc
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as exc:
            # What a server that refuses a connection (a cap or a rate) does over TLS.
            raise ConnectError(f"cannot connect to {self.peer}: the server closed the "
                               "connection during the TLS handshake") from exc
        except ssl.SSLError as exc:
            reason = (exc.reason or str(exc)).lower().replace("_", " ")
            if exc.reason in PLAIN_REPLY:
                reason += f" (is {self.port} the server's TLS port?)"
            raise TLSRefused(f"cannot connect to {self.peer}: the TLS handshake failed: "
                             f"{reason}") from exc
        stream = TCPStream(reader, writer)
        if self.check is not None:
            try:
                self.check(writer.get_extra_info("ssl_object").getpeercert(binary_form=True))
            except BaseException:
                await stream.aclose()
                raise
        return stream
