"""The parent's admin socket: `chatd admin` (chatd/admincli.py) talks to the running
server through it.

A Unix stream socket, `admin.sock` in the data dir, created mode 0600 (chatd's user
only); a peer that got through anyway must still be chatd's user or root (SO_PEERCRED),
or it gets `permission_denied` and nothing else. One request per connection: one JSON
object on one line of at most MAX_REQUEST bytes; one JSON document back, then the
server closes (chatd/adminops.py says what requests there are).

The parent never blocks on an admin client and never trusts one: the listener and its
connections are non-blocking sockets in the parent's selector loop, at most
MAX_CONNECTIONS at a time, each closed at its DEADLINE whatever state it is in; the
request is bounded and parsed strictly; a long answer (the session list) is produced in
chunks as the client takes them, with routing in between.

The server ends a connection by shutting down its side and waiting for the client to
hang up, reading (and dropping) whatever else the client sends. Closing at once would
race the client: an answer given before the request was read (`permission_denied`,
`busy`, `request_too_large`) would reach a client still sending its request as a broken
pipe, and a close with unread bytes makes the kernel report a reset to the client.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import socket
import stat
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from chatd.adminops import AdminRequestError, Ops, Peer, parse_request

if TYPE_CHECKING:
    from chatd.master import Master

log = logging.getLogger("chatd.master")
SOCKET_NAME = "admin.sock"  # in the data dir (the session re-adoption socket is another)
MAX_REQUEST = 4096  # bytes of the one request line
DEADLINE = 5.0  # seconds an admin connection may take, from accept to the last byte
MAX_CONNECTIONS = 8
MAX_DRAIN = 64 << 10  # bytes dropped per turn from a client that keeps sending after its answer
UNIX_PATH_MAX = 107  # sun_path holds 108 bytes with the terminating NUL
UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class AdminError(Exception):
    """The admin socket cannot be set up (one line for the operator)."""


@contextlib.contextmanager
def unix_address(path: Path) -> Iterator[str]:
    """`path` as a Unix socket address. A path longer than sun_path takes is reached
    through the directory's descriptor (/proc/self/fd/N/NAME), which binds and connects
    to the same file."""
    if len(os.fsencode(path)) <= UNIX_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def error_reply(code: str, message: str) -> bytes:
    return json.dumps({"ok": False, "error": code, "message": message}).encode() + b"\n"


class Conn:
    """One admin client: its request as it comes in, then its answer as it goes out."""

    __slots__ = ("sock", "deadline", "request", "out", "body", "peer", "done")

    def __init__(self, sock: socket.socket, deadline: float, peer: Peer) -> None:
        self.sock = sock
        self.deadline = deadline
        self.peer = peer
        self.request = bytearray()
        self.out = memoryview(b"")  # what is being sent
        self.body: Iterator[bytes] | None = None  # the rest of the answer, made on demand
        self.done = False  # all sent: waiting for the client to hang up


class AdminServer:
    def __init__(self, master: Master) -> None:
        self.master = master
        self.path = master.config.data_dir / SOCKET_NAME
        self.listener: socket.socket | None = None
        self.inode: tuple[int, int] | None = None  # (dev, ino) of the socket we made
        self.conns: dict[socket.socket, Conn] = {}
        self.ops = Ops(master)

    # ---- the listening socket ----

    def listen(self) -> None:
        """Create admin.sock (replacing one a dead server left behind)."""
        if not self._clear_stale():
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # born 0600: no moment in which others could connect
        try:
            with unix_address(self.path) as address:
                sock.bind(address)
            os.chmod(self.path, 0o600)
            sock.listen(64)
        except OSError as exc:
            sock.close()
            raise AdminError(f"cannot create the admin socket {self.path}: "
                             f"{exc.strerror or exc}") from None
        finally:
            os.umask(old)
        st = os.stat(self.path)
        self.inode = (st.st_dev, st.st_ino)
        sock.setblocking(False)
        self.listener = sock
        self.master.sel.register(sock, selectors.EVENT_READ, self._accept)
        log.info("admin socket %s (chatd admin --data-dir %s)", self.path,
                 self.master.config.data_dir)

    def handed(self) -> list[int] | None:
        """For `chatd upgrade` (chatd/handover.py): [fd, dev, ino] of the listener."""
        if self.listener is None or self.inode is None:
            return None
        return [self.listener.fileno(), *self.inode]

    def adopt(self, fd: int, dev: int, ino: int) -> None:
        """Listen on the socket our predecessor handed over (the same admin.sock)."""
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        self.inode = (dev, ino)
        self.listener = sock
        self.master.sel.register(sock, selectors.EVENT_READ, self._accept)
        log.info("admin socket %s handed over", self.path)

    def _clear_stale(self) -> bool:
        """Remove a socket file no server answers on; False if a live one does."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return True
        except OSError as exc:
            raise AdminError(f"cannot use {self.path}: {exc.strerror}") from None
        if not stat.S_ISSOCK(st.st_mode):
            raise AdminError(f"{self.path} is in the way of the admin socket and is not a "
                             f"socket: move it away")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            with unix_address(self.path) as address:
                probe.connect(address)
        except OSError:  # refused (stale), or we may not connect: it is not a live server's
            pass
        else:
            log.error("another chatd answers on %s: this server has no admin socket",
                      self.path)
            return False
        finally:
            probe.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        return True

    def close(self) -> None:
        """Stop listening and remove admin.sock if it is still ours (at stop); the
        connections already open are served to their end."""
        if self.listener is None:
            return
        self.master.sel.unregister(self.listener)
        self.listener.close()
        self.listener = None
        with contextlib.suppress(OSError):
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self.inode:
                os.unlink(self.path)

    # ---- the loop's hooks ----

    def timeout(self, now: float) -> float | None:
        if not self.conns:
            return None
        return max(0.0, min(c.deadline for c in self.conns.values()) - now)

    def tick(self, now: float) -> None:
        """Once per turn of the loop: the messages/s sample, and overdue connections."""
        self.ops.rate.sample(now, self.master.broker.history.last_id)
        if self.conns:
            for conn in [c for c in self.conns.values() if c.deadline <= now]:
                log.warning("admin connection (uid %d, pid %d) closed at its %gs deadline",
                            conn.peer.uid, conn.peer.pid, DEADLINE)
                self._close(conn)

    # ---- connections ----

    def _accept(self, listener: socket.socket, mask: int) -> None:
        for _ in range(MAX_CONNECTIONS):
            try:
                sock, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.error("admin socket: accept failed: %s", exc)
                return
            sock.setblocking(False)
            pid, uid, _gid = UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET,
                                                          socket.SO_PEERCRED, UCRED.size))
            conn = Conn(sock, time.monotonic() + DEADLINE, Peer(pid, uid))
            self.conns[sock] = conn
            self.master.sel.register(sock, selectors.EVENT_READ, self._io)
            if len(self.conns) > MAX_CONNECTIONS:
                self._answer(conn, error_reply("busy", f"{MAX_CONNECTIONS} admin "
                                               f"connections are open; try again"))
            elif uid not in (os.geteuid(), 0):
                log.warning("admin socket: refused uid %d (pid %d): only uid %d or root",
                            uid, pid, os.geteuid())
                self._answer(conn, error_reply(
                    "permission_denied", f"uid {uid} may not administer this server "
                    f"(only uid {os.geteuid()} or root)"))

    def _io(self, sock: socket.socket, mask: int) -> None:
        conn = self.conns.get(sock)
        if conn is None:
            return
        if conn.done:
            self._drain(conn)
        elif conn.body is None and not conn.out:
            self._read(conn)
        else:
            self._send(conn)

    def _read(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(MAX_REQUEST + 1 - len(conn.request))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        end = data.find(b"\n")
        conn.request += data if end < 0 else data[:end]
        if end < 0 and data and len(conn.request) <= MAX_REQUEST:
            return  # more to come
        if len(conn.request) > MAX_REQUEST:
            self._answer(conn, error_reply("request_too_large",
                                           f"a request is at most {MAX_REQUEST} bytes"))
            return
        if not conn.request and end < 0:  # it hung up without a word
            self._close(conn)
            return
        try:
            request = parse_request(bytes(conn.request))
            answer = self.ops.handle(request, conn.peer)
        except AdminRequestError as exc:
            answer = error_reply(exc.code, exc.message)
        self._answer(conn, answer)

    def _answer(self, conn: Conn, answer: bytes | Iterator[bytes]) -> None:
        """Send `answer` (whole, or chunks made as the client takes them); read no more."""
        if isinstance(answer, bytes):
            conn.out, conn.body = memoryview(answer), iter(())
        else:
            conn.body = answer
        self.master.sel.modify(conn.sock, selectors.EVENT_WRITE, self._io)
        self._send(conn)

    def _send(self, conn: Conn) -> None:
        """As much as the socket takes now; one new chunk of the answer per call, so a
        long answer is made between turns of routing."""
        made = False
        while True:
            if not conn.out:
                if made or conn.body is None:
                    return
                chunk = next(conn.body, None)
                if chunk is None:
                    self._finish(conn)
                    return
                conn.out, made = memoryview(chunk), True
            try:
                sent = conn.sock.send(conn.out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # the admin client went away
                self._close(conn)
                return
            conn.out = conn.out[sent:]

    def _finish(self, conn: Conn) -> None:
        """The answer is sent: say so (EOF) and wait for the client to hang up."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:  # it went away already
            self._close(conn)
            return
        conn.done = True
        self.master.sel.modify(conn.sock, selectors.EVENT_READ, self._io)

    def _drain(self, conn: Conn) -> None:
        """Drop what the client still sends (its request, when the answer came first);
        close when it hangs up. At most MAX_DRAIN bytes per turn; its deadline holds."""
        for _ in range(MAX_DRAIN // 4096):
            try:
                data = conn.sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._close(conn)
                return

    def _close(self, conn: Conn) -> None:
        self.conns.pop(conn.sock, None)
        with contextlib.suppress(KeyError, ValueError):
            self.master.sel.unregister(conn.sock)
        conn.sock.close()
