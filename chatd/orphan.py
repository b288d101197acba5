"""A session whose parent died: waiting to be adopted by the next one (session side).

Sessions cannot connect anywhere (the sandbox refuses socket() and connect()), so the
direction is turned round: each session process, before its sandbox, listens on an
abstract Unix socket named after the data dir and its own pid, on fd ADOPT_FD (the
sandbox allows accept() on that fd alone). It never accepts while its parent lives.
When its channel ends (the parent died) it keeps its client and accepts for
`broker_grace` seconds; a new `chatd serve` on the same data dir finds the socket
(/proc/net/unix), connects, and the session re-registers (chatd/adopt.py, the parent's
side) and carries on over the new connection as its channel.

Who is who: the session takes a connection only from the parent's user (or root), by
SO_PEERCRED. The parent believes a session's token, nick, account and rooms only as its
predecessor signed them for that pid (the `state` control: an HMAC under the data dir's
key, `DIR/session.key`, 0600, that every parent of the data dir reads), and only from
the process SO_PEERCRED names as that pid. A session never holds the key: the parent
keeps it in one buffer (`KEY`) that a new session process zeroes before anything else.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import mmap
import os
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatd import channel, seccomp
from chatd.outbox import Outbox
from chatd.protocol import pack

log = logging.getLogger("chatd.session")
ADOPT_FD = seccomp.ADOPT_FD  # where the listening socket lives (accept() works there only)
KEY_FILE = "session.key"
MESSAGE_MARK = b"\xa4type\xa7message\xa2id"  # a `message` frame, as the broker packs it
_ID_AT = len(MESSAGE_MARK)  # where the id's encoding starts after it
# A RAW envelope (chatd/channel.py) of one `message` frame as the broker packs it: the
# envelope's kind and length, the frame's length, its map's one-byte header, the marker,
# then the id's encoding and what follows it (Delivered.newest's 9 bytes).
ONE_MESSAGE = struct.Struct(channel.ENVELOPE.format + "I1x16s9s")
_UINT = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}  # its type byte: how many bytes follow
_CRED = struct.Struct("3i")


def address(data_dir: Path, pid: int) -> bytes:
    """The abstract socket name of session `pid` of the server on `data_dir`."""
    return b"\0" + prefix(data_dir) + str(pid).encode()


def prefix(data_dir: Path) -> bytes:
    """Made once per data dir and kept: resolving a path in each new session process
    cost it ~0.3 MiB of pages copied from its parent's."""
    known = _PREFIXES.get(str(data_dir))
    if known is None:
        digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
        known = _PREFIXES[str(data_dir)] = f"chatd-{digest}-".encode()
    return known


_PREFIXES: dict[str, bytes] = {}


# ---- the key (parent side, read once) ----

KEY = bytearray()  # the data dir's key, in the parent; zeroed in each session process


def forget_key() -> None:
    """First thing in a new session process."""
    KEY[:] = bytes(len(KEY))


def load_key(data_dir: Path) -> bytes:
    """The data dir's secret (made on first use, 0600): it outlives every parent."""
    path = data_dir / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        key = path.read_bytes()
        if len(key) >= 32:
            return key
        log.warning("%s is too short; making a new one", path)
        path.unlink()
        return load_key(data_dir)
    with os.fdopen(fd, "wb") as out:
        out.write(os.urandom(32))
    return path.read_bytes()


def signed_state(key: bytes | bytearray, pid: int, token: str, nick: str | None,
                 account: str | None, rooms: list[str], resume: str = "") -> dict[str, Any]:
    """The broker's word on who session `pid` with `token` is (the `state` control's
    fields), which the session shows the next parent. With it, signed apart (`rsig`), the
    session's resume secret (chatd/takeover.py; its client has it already, from `welcome`):
    an adopted session can still be taken over. (Apart, because a session running code
    from before the secret was kept shows the next parent only `sig` and what it covers.)"""
    state: dict[str, Any] = {"nick": nick, "account": account, "rooms": sorted(rooms)}
    state["sig"] = _sign(key, pid, token, state)
    if resume:
        state["resume"], state["rsig"] = resume, _sign_resume(key, pid, token, resume)
    return state


def state_valid(key: bytes | bytearray, pid: int, token: str, state: dict[str, Any]) -> bool:
    sig = state.get("sig")
    return isinstance(sig, str) and hmac.compare_digest(sig, _sign(key, pid, token, state))


def resume_secret(key: bytes | bytearray, pid: int, token: str, state: dict[str, Any]) -> str:
    """The resume secret in a registration's `state`, if signed for this pid and token;
    "" (no takeover of the adopted session) otherwise."""
    secret, sig = state.get("resume"), state.get("rsig")
    if not isinstance(secret, str) or not secret or not isinstance(sig, str):
        return ""
    return secret if hmac.compare_digest(sig, _sign_resume(key, pid, token, secret)) else ""


def _sign(key: bytes | bytearray, pid: int, token: str, state: dict[str, Any]) -> str:
    body = repr((pid, token, state.get("nick"), state.get("account"), state.get("rooms")))
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def _sign_resume(key: bytes | bytearray, pid: int, token: str, secret: str) -> str:
    body = repr(("resume", pid, token, secret))
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def peer(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the other end (SO_PEERCRED)."""
    pid, uid, gid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                 _CRED.size))
    return pid, uid, gid


# ---- the session process ----


def listen(data_dir: Path) -> socket.socket | None:
    """In a new session process, before its sandbox: the socket a next parent will find.
    None (and a log line) if it cannot have one; the session then ends with its parent."""
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError as exc:
        log.warning("no adoption socket: %s", exc)
        return None
    try:
        sock.bind(address(data_dir, os.getpid()))
        sock.listen(2)
        if sock.fileno() != ADOPT_FD:
            moved = socket.socket(fileno=os.dup2(sock.fileno(), ADOPT_FD))
            sock.close()
            sock = moved
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        log.warning("no adoption socket: %s", exc)
        return None
    return sock


def accept(listener: socket.socket, parent_uid: int) -> socket.socket | None:
    """A connection from a would-be parent of ours (its user, or root); None if none is
    waiting or it came from someone else (whom we hang up on)."""
    try:
        conn, _addr = listener.accept()
    except (BlockingIOError, InterruptedError):
        return None
    except OSError as exc:
        log.warning("adoption: accept failed: %s", exc)
        return None
    _pid, uid, _gid = peer(conn)
    if uid not in (parent_uid, 0):
        log.warning("adoption: refused a connection from uid %d", uid)
        conn.close()
        return None
    conn.setblocking(False)
    return conn


class Delivered:
    """The newest message id this session has handed to its client, read off the RAW
    bodies without decoding them: the last `message` map in a body (one C-speed search
    from its end; walking its frames in Python would cost ~1 us per frame, more than the
    rest of a delivery). Live messages reach a session in id order, and a page holds only
    messages queued after everything older, so this id says what the client has in every
    room. (The byte sequence cannot occur inside text, which must be UTF-8: a lone 0xA7
    after ASCII is not; only a client's own binary label could hold it, which would cost
    only that client its own catch-up.)

    A delivery keeps only the id's encoding, undecoded: msgpack writes an unsigned integer
    in its shortest form, type byte first, then big-endian, so the encodings of two ids
    (and whatever follows them) compare as bytes as the ids do. `last` decodes it, which
    only a next parent needs (decoding each id cost a session ~0.3 us a delivery)."""

    def __init__(self) -> None:
        self.newest = b""  # the newest id's encoding and the few bytes after it
        self.floor = 0  # the state control's `upto`

    @property
    def last(self) -> int:
        code = self.newest
        if not code:
            msg_id = 0
        elif code[0] < 0x80:
            msg_id = code[0]
        else:
            msg_id = int.from_bytes(code[1:1 + _UINT[code[0]]], "big")
        return max(msg_id, self.floor)

    def upto(self, msg_id: Any) -> None:
        """The `state` control's `upto`: every message of our rooms up to that id was
        queued to us before it, so our client has it (or never asked for it: a `join`
        with `after` past it). Without it, a session that forwarded no `message` frame
        since its rooms' catch-up (a quiet room) would be caught up from id 0 by a next
        parent: its client would get the room's whole history again."""
        if isinstance(msg_id, int) and msg_id > self.floor:
            self.floor = msg_id

    def feed(self, body: memoryview | bytes) -> None:
        data = body if isinstance(body, bytes) else bytes(body)
        self.feed_in(data, 0, len(data))

    def offer(self, code: bytes) -> None:
        """The id's encoding (and what follows it), read in place: from a lone `message`
        frame (ONE_MESSAGE) or after the newest marker of a body (feed_in). Kept only if
        it is a msgpack unsigned integer, which `last` can decode."""
        if code > self.newest and code and (code[0] < 0x80 or code[0] in _UINT):
            self.newest = code

    def feed_in(self, data: bytes | mmap.mmap, start: int, end: int) -> None:
        """feed() of data[start:end], read in place (the session's receive buffer)."""
        at = data.rfind(MESSAGE_MARK, start, end)
        if at >= 0:
            at += _ID_AT
            self.offer(data[at:at + 9 if at + 9 < end else end])


def resume_point(frames: bytes | memoryview, sent: int) -> int:
    """Where the first whole frame not yet begun starts in `frames`, of which `sent`
    bytes went to the old parent: a new parent must not get half a frame."""
    pos = 0
    with contextlib.suppress(IndexError):
        while pos < sent:
            pos += 4 + int.from_bytes(frames[pos:pos + 4], "big")
    return pos


@dataclass(eq=False)
class Adoption:
    """What a session process keeps to be adopted: its listening socket, the user its
    parent runs as, who it is (its token and its client's address), the broker's latest
    signed word on it (the `state` control) and the newest message id it delivered."""

    listener: socket.socket
    parent_uid: int
    token: str = ""
    ip: str = ""
    state: dict[str, Any] | None = None
    delivered: Delivered = field(default_factory=Delivered)
    watching: bool = False  # the listener is in the loop's epoll (the parent is gone)

    @property
    def possible(self) -> bool:
        """Only a welcomed session is adopted (one still registering simply ends)."""
        return self.state is not None and self.state.get("nick") is not None

    def registration(self) -> bytes:
        """The first frame to a new parent (chatd/adopt.py reads it)."""
        assert self.state is not None
        return pack({"type": "register", "pid": os.getpid(), "token": self.token,
                     "ip": self.ip, "last": self.delivered.last, "cv": channel.VERSION,
                     "state": {k: self.state.get(k) for k in ("nick", "account", "rooms",
                                                                "sig", "resume", "rsig")}})


def restart(out: Outbox, first: bytes) -> None:
    """The requests waiting for the old parent go to a new one after `first`: a request
    of which the old parent got part is dropped with it (it never had it whole)."""
    if out.offset and out.chunks:
        head = out.chunks[0]
        cut = resume_point(head, out.offset)
        out.chunks[0] = memoryview(head)[cut:]
        out.offset = 0
        if not out.chunks[0]:
            del out.chunks[0]
    out.chunks.insert(0, first)
    out.size = sum(map(len, out.chunks))
