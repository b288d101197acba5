"""The parent <-> session channel: its whole vocabulary, and its one parser.

Like h11's `_events.py`, every control the two sides exchange is defined here, once.

Parent -> session: envelopes of a 1-byte kind and a 4-byte big-endian length.
RAW envelopes hold already-encoded client frames, which the session forwards
to its client untouched (no per-message work in the session); CTRL envelopes
hold one msgpack map for the session process itself, `{"c": KIND, ...}`:

    client   {"c": "client", "token": str, "ip": str, "tls": bool, "irc": bool}
             a spare process is handed its client (the socket rides along, SCM_RIGHTS);
             tls/irc say which listener it came to (the client speaks TLS, IRC)
    welcome  {"c": "welcome", "nick": str}      the hello was accepted
    close    {"c": "close", "code": str, "limit"?: str, "message"?: str}
             end the session with this error (the broker already forgot it)
    config   {"c": "config", "values": {...}}   the settings after a reload
    done     {"c": "done"}                       a catch-up request (CATCHUP) is answered
    state    {"c": "state", "nick", "account", "rooms", "sig"}
             who the session is now (after a hello, join, part, nick, ...), signed for its
             pid and token: what it shows a next parent if this one dies (chatd/orphan.py)
    adopted  {"c": "adopted"}                    a new parent took the session in

Session -> parent: ordinary protocol frames (chatd.protocol), re-encoded by
the session from validated fields only, so the parent never sees client bytes.

The channel has a version. A session speaks the version of the code it was forked
from until it ends, and after `chatd upgrade` its parent runs newer code: a parent
serves every version in SUPPORTED (the upgrade's probe refuses new code that does not
serve the versions of the sessions running now). A change a session of an older
version would not understand gets a new VERSION; SUPPORTED keeps the old ones.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

import msgpack

VERSION = 1  # what this code's sessions speak
SUPPORTED = frozenset({1})  # what this code's parent serves
ENVELOPE = struct.Struct(">BI")
RAW, CTRL = 0, 1
# Requests whose replies can be large (join, history) or come later, from the auth helper
# (register, login, auth: what follows a login must see its outcome). The broker follows
# its answer to each (reply or error) with the DONE control, so a session can keep few of
# them in flight, and holds the others back until they are answered.
CATCHUP = frozenset({"join", "history", "register", "login", "auth"})

Control = dict[str, Any]
CLIENT, WELCOME, CLOSE, CONFIG, DONE_KIND = "client", "welcome", "close", "config", "done"
STATE, ADOPTED_KIND = "state", "adopted"
KINDS = frozenset({CLIENT, WELCOME, CLOSE, CONFIG, DONE_KIND, STATE, ADOPTED_KIND})
DONE: Control = {"c": DONE_KIND}
ADOPTED: Control = {"c": ADOPTED_KIND}


def client(token: str, ip: str, tls: bool = False, irc: bool = False) -> Control:
    return {"c": CLIENT, "token": token, "ip": ip, "tls": tls, "irc": irc}


def welcome(nick: str) -> Control:
    return {"c": WELCOME, "nick": nick}


def close(code: str, limit: str | None = None, message: str = "") -> Control:
    ctrl: Control = {"c": CLOSE, "code": code}
    if limit:
        ctrl["limit"] = limit
    if message:
        ctrl["message"] = message
    return ctrl


def config(values: dict[str, Any]) -> Control:
    return {"c": CONFIG, "values": values}


def is_close(item: bytes | Control) -> bool:
    return isinstance(item, dict) and item.get("c") == CLOSE


def encode_items(items: Iterable[bytes | Control]) -> bytes:
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


def control(item: Control) -> bytes:
    return encode_items([item])


class EnvelopeReader:
    """The one parser of the parent's stream into (kind, body) pairs.

    Bodies are memoryview slices of what was received, not copies: a burst of RAW
    deliveries goes to the client with one send and no copy. Only the bytes of a
    partial envelope at the end are kept (copied) until the rest arrives.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def buffered(self) -> bool:
        """Whether bytes of a partial envelope are waiting for more."""
        return bool(self._buf)

    def feed(self, data: bytes | memoryview) -> list[tuple[int, memoryview]]:
        """The whole envelopes that `data` completes, in order."""
        if self._buf:
            self._buf += data
            data = bytes(self._buf)
            self._buf.clear()
        view = memoryview(data)
        size, pos, header = len(view), 0, ENVELOPE.size
        if size >= header:  # the usual wakeup at a steady rate: exactly one envelope
            kind, length = ENVELOPE.unpack_from(view)
            if header + length == size:
                return [(kind, view[header:])]
        out: list[tuple[int, memoryview]] = []
        while size - pos >= header:
            kind, length = ENVELOPE.unpack_from(view, pos)
            end = pos + header + length
            if end > size:
                break
            out.append((kind, view[pos + header : end]))
            pos = end
        if pos < size:
            self._buf += view[pos:]
        return out


def decode_control(body: bytes | memoryview) -> Control:
    obj = msgpack.unpackb(body, raw=False)
    if not isinstance(obj, dict):
        raise ValueError("control is not a map")
    return obj
