"""Socket I/O beneath the loops: reads that never block, bytes waiting for a socket,
and the last words before a socket closes.

Used by the session process (towards its client and towards the parent) and by the
parent (towards its sessions and its history reader).
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import mmap
import select
import socket
import struct
import termios
import time

from chatd.config import Config

READ_SIZE = 262144  # from the parent: a burst of deliveries in one call
CHANNEL_READ_SIZE = 262144  # a Receiver's: a burst of deliveries in one call
RESIDENT = 16384  # what a Receiver keeps of its buffer in memory between large reads
CLIENT_READ_SIZE = 16384  # from the client: requests are small
IOV_MAX = 512
ACK_POLL = 0.01  # seconds between looks at what the client has not acknowledged yet
LINGER_RESET = struct.pack("ii", 1, 0)  # close() resets the connection
LINGER_OFF = struct.pack("ii", 0, 0)  # close() ends the stream after what was sent


class Outbox:
    """Chunks of whole frames waiting for a socket; tracks a partly sent head."""

    def __init__(self) -> None:
        self.chunks: list[bytes | memoryview] = []
        self.offset = 0
        self.size = 0

    def add(self, chunk: bytes | memoryview) -> None:
        if chunk:
            self.chunks.append(chunk)
            self.size += len(chunk)

    def clear(self) -> None:
        """Drop everything (the peer is gone)."""
        self.chunks, self.offset, self.size = [], 0, 0

    def discard(self) -> None:
        """Drop all but a partly sent head, so the stream stays frame-aligned."""
        keep = self.chunks[:1] if self.offset else []
        self.chunks = keep
        self.size = sum(map(len, keep)) - self.offset  # the head's unsent part

    def push(self, data: bytes | memoryview, sock: socket.socket) -> None:
        """add(data), then send(sock) (and its errors): into an empty box, one send()."""
        if self.chunks or not data:
            self.add(data)
            self.send(sock)
            return
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent < len(data):
            self.keep(data, sent)

    def keep(self, data: bytes | memoryview, sent: int) -> None:
        """Into an empty box: what a send() of `data` did not take (it took `sent`)."""
        self.chunks.append(data)
        self.offset, self.size = sent, len(data) - sent

    def send(self, sock: socket.socket) -> None:
        chunks = self.chunks
        if len(chunks) == 1 and not self.offset:  # the usual case: one send(), all taken
            try:
                sent = sock.send(chunks[0])
            except (BlockingIOError, InterruptedError):
                return
            if sent == self.size:
                chunks.clear()
                self.size = 0
                return
            self.size -= sent
            self.offset = sent
            return
        while self.chunks:
            chunks = self.chunks
            try:
                if len(chunks) == 1:  # the usual case: one send(), no iovec list
                    head = chunks[0]
                    sent = sock.send(memoryview(head)[self.offset :] if self.offset else head)
                else:
                    bufs = chunks[:IOV_MAX]
                    if self.offset:
                        bufs[0] = memoryview(bufs[0])[self.offset :]
                    sent = sock.sendmsg(bufs)
            except (BlockingIOError, InterruptedError):
                return
            self.size -= sent
            sent += self.offset
            done = 0
            while done < len(chunks) and sent >= len(chunks[done]):
                sent -= len(chunks[done])
                done += 1
            del chunks[:done]
            self.offset = sent
            if sent:
                return


class ClientOutbox(Outbox):
    """The outbox towards the client, which keeps the stream whole frames if we die.

    While a frame is partly sent, the socket's SO_LINGER is on with a zero timeout, so
    if this process closes it then (its last close, a crash, a kill -9) the kernel resets
    the connection instead of ending the stream cleanly in the middle of a frame. One
    setsockopt() per change, which happens only when the client is slow.
    """

    reset_on_close = False

    def send(self, sock: socket.socket) -> None:
        try:
            Outbox.send(self, sock)
        finally:
            if (self.offset != 0) != self.reset_on_close:
                self.reset_on_close = not self.reset_on_close
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    LINGER_RESET if self.reset_on_close else LINGER_OFF)


def send_or_drop(box: Outbox, sock: socket.socket) -> bool:
    """Send what the socket takes; False if the peer is gone (the box is emptied)."""
    try:
        box.send(sock)
        return True
    except OSError:
        box.clear()
        return False


def flush_until(box: Outbox, sock: socket.socket, deadline: float) -> bool:
    """Send what `box` holds until it is empty (True) or the deadline passes (False)."""
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    while box.chunks:
        try:
            box.send(sock)
        except OSError:
            return False
        remaining = deadline - time.monotonic()
        if box.chunks and remaining <= 0:
            return False
        if box.chunks:
            poller.poll(remaining * 1000)
    return True


def wait_delivered(sock: socket.socket, deadline: float) -> None:
    """End our side of the stream and wait (to the deadline) until the client's kernel
    has acknowledged all of it, dropping what the client still sends."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        return
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    reading = True
    while unacknowledged(sock) and (remaining := deadline - time.monotonic()) > 0:
        if poller.poll(min(remaining, ACK_POLL) * 1000) and reading:
            state = discard_input(sock)
            if state == "gone":
                return
            if state == "closed":  # it may still read: keep waiting, without polling it
                poller.unregister(sock)
                reading = False


def unacknowledged(sock: socket.socket) -> int:
    """Bytes (and the FIN) sent to the client that it has not acknowledged (SIOCOUTQ)."""
    buf = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, buf, True)
    except OSError:
        return 0
    return buf[0]


def discard_input(sock: socket.socket) -> str:
    """Read and drop what the client sent: "open", "closed" (its side) or "gone".
    A bounded amount per call, so that a client sending flat out cannot keep us here."""
    for _ in range(64):
        try:
            if not sock.recv(65536):
                return "closed"
        except (BlockingIOError, InterruptedError):
            return "open"
        except OSError:
            return "gone"
    return "open"


def tune_client_socket(sock: socket.socket, config: Config) -> None:
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # The kernel's send buffer is a queue towards the client too: bound it like ours
    # (autotuning would otherwise let megabytes pile up for a client that stopped reading).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, config.client_queue)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    idle = int(config.tcp_keepalive)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, idle // 3))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


class Receiver:
    """Reads a socket into one reused buffer of this process's own, copied out at size.

    `sock.recv(READ_SIZE)` mallocs READ_SIZE bytes and shrinks them for every read:
    above glibc's mmap threshold (128 KiB) each read costs an mmap, a page fault, an
    mremap and an munmap, which was most of a session's wakeup at a steady rate. The
    buffer is an anonymous mapping made after the fork: only the pages a read reaches
    become resident (a steady chat's small reads keep one), and no page is shared with
    the parent. Reads stay large: a burst read 64 KiB at a time cost the sessions about
    a third more CPU than 256 KiB.
    """

    def __init__(self, size: int = CHANNEL_READ_SIZE) -> None:
        self.buffer = mmap.mmap(-1, size)
        self.view = memoryview(self.buffer)

    def __call__(self, sock: socket.socket) -> bytes | None:
        """Received bytes, b"" at end of stream or on error, None if nothing is ready."""
        data = self.read(sock)
        return data if data is None else data.tobytes()

    def read(self, sock: socket.socket) -> memoryview | None:
        """Like calling it, but uncopied: a view of the buffer, good until the next read
        (settle() what is kept of it before then)."""
        try:
            size = sock.recv_into(self.view)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            size = 0
        return self.view[:size]

    def settle(self, box: Outbox, size: int) -> None:
        """After a read of `size` bytes: copy what `box` still holds of the buffer out of
        it, and hand the pages a large read touched back to the kernel (a session would
        otherwise keep a burst's whole buffer resident, idle or not)."""
        buffer = self.buffer
        if box.chunks and any(isinstance(c, memoryview) and c.obj is buffer
                              for c in box.chunks):
            box.chunks = [bytes(c) if isinstance(c, memoryview) and c.obj is buffer
                          else c for c in box.chunks]
        if size > RESIDENT:
            buffer.madvise(mmap.MADV_DONTNEED, RESIDENT, len(buffer) - RESIDENT)


def recv(sock: socket.socket) -> bytes | None:
    """Received bytes, b"" at end of stream or on error, None if nothing is ready.
    (For the rare reads; a loop that reads often has a Receiver.)"""
    try:
        return sock.recv(READ_SIZE)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


_CLIENT_BUF = bytearray(CLIENT_READ_SIZE)
_CLIENT_VIEW = memoryview(_CLIENT_BUF)


def recv_client(sock: socket.socket) -> bytes | None:
    """Like recv(), for the client socket: into one reused buffer, copied out at size.

    `sock.recv(n)` mallocs n bytes and shrinks them for every read; for a client's
    many small frames over hours that fragments the heap and the session's memory
    creeps up without end (measured: about +0.7 MB per 10,000 small frames). The
    parent's channel has a Receiver: a buffer of the session's own (this one is
    inherited from the parent, which made its burst reads a third dearer).
    """
    try:
        size = sock.recv_into(_CLIENT_BUF)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""
    return _CLIENT_VIEW[:size].tobytes()
