"""How a client connection lives and ends: its states, and the exceptions that end it.

Like httpcore's `HTTPConnectionState` and its exception types: the `Connection` moves
through `ConnState` only along `TRANSITIONS`, and every way a connection can end is an
exception type (with the text shown to the user as its message), not a reason string.
`map_exceptions` turns what the network layer raises into those types at one edge.
"""

from __future__ import annotations

import contextlib
import enum
import os
from collections.abc import Iterator


class ConnState(enum.Enum):
    CONNECTING = "connecting"  # opening the stream
    HANDSHAKE = "handshake"  # stream open, hello sent, no welcome yet
    CONNECTED = "connected"  # welcomed: requests flow
    RECONNECTING = "reconnecting"  # waiting out the back-off before the next attempt
    CLOSED = "closed"  # run() has ended; final


TRANSITIONS: dict[ConnState, frozenset[ConnState]] = {
    ConnState.CONNECTING: frozenset({ConnState.HANDSHAKE, ConnState.RECONNECTING,
                                     ConnState.CLOSED}),
    ConnState.HANDSHAKE: frozenset({ConnState.CONNECTED, ConnState.RECONNECTING,
                                    ConnState.CLOSED}),
    ConnState.CONNECTED: frozenset({ConnState.RECONNECTING, ConnState.CLOSED}),
    ConnState.RECONNECTING: frozenset({ConnState.CONNECTING, ConnState.CLOSED}),
    ConnState.CLOSED: frozenset(),
}


class BadTransition(RuntimeError):
    """A bug in the client: the connection tried a state change TRANSITIONS forbids."""


class ConnectionEnded(Exception):
    """Why a connection ended. `str()` is the text for the user; `retry` says whether
    connecting again can help."""

    retry = True


class ConnectError(ConnectionEnded):
    """The stream could not be opened (refused, unreachable, name not found...)."""


class ConnectTimeout(ConnectError):
    """Opening the stream took too long."""


class ConnectionLost(ConnectionEnded):
    """Reading or writing failed (reset, broken pipe...)."""


class ServerClosed(ConnectionEnded):
    """The server closed the connection (end of stream)."""

    def __init__(self, message: str = "connection closed by the server") -> None:
        super().__init__(message)


class ServerSilent(ConnectionEnded):
    """Dead-server detection: nothing arrived for too long after a ping."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no answer from the server for {seconds:.0f}s")
        self.seconds = seconds


class BadFrame(ConnectionEnded):
    """The server's byte stream broke framing: the next frame cannot be found."""


class TLSRefused(ConnectionEnded):
    """The TLS handshake failed for a reason retrying cannot fix: the server's certificate
    is not trusted, its key is not the one pinned, the port does not speak TLS..."""

    retry = False


class HelloRefused(ConnectionEnded):
    """The server refused our hello for a reason retrying cannot fix (unsupported
    version, invalid nick, nick taken too often...)."""

    retry = False

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class TakenOver(ConnectionEnded):
    """Another connection proved it is this session's client and took the session over
    (protocol.md §2): another copy of this client has it now. Reconnecting would only take
    it back, or end as `nick_`."""

    retry = False

    def __init__(self, message: str) -> None:
        super().__init__(f"taken_over: {message}; not reconnecting")


def describe(exc: BaseException) -> str:
    """A short human text for a network exception."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        # asyncio's strerror for a refused connect is "Connect call failed (addr)"; the
        # errno says it better. Resolver errors have negative errnos but a good strerror.
        if isinstance(exc.errno, int) and exc.errno > 0:
            return os.strerror(exc.errno)
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__


@contextlib.contextmanager
def map_exceptions(mapping: dict[type[BaseException], type[ConnectionEnded]],
                   prefix: str = "") -> Iterator[None]:
    """Re-raise an exception of a key type as the mapped ConnectionEnded type (the first
    matching key wins), its message `prefix` + a description. Others pass unchanged."""
    try:
        yield
    except ConnectionEnded:
        raise
    except Exception as exc:
        for source, target in mapping.items():
            if isinstance(exc, source):
                raise target(prefix + describe(exc)) from exc
        raise
