"""The session process: a thin I/O loop between one client socket and the broker.

Bytes from the client go through `Session`; RAW envelopes from the parent are
forwarded to the client as they are. Output towards the client is a list of
whole-frame chunks sent with one sendmsg() per wakeup.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import gc
import logging
import os
import resource
import select
import signal
import socket
import ssl
import struct
import termios
import time
from dataclasses import dataclass, field

from chatd import channel, logsetup, tls
from chatd.channel import CTRL, RAW, EnvelopeReader, decode_control
from chatd.config import Config
from chatd.session import Session

log = logging.getLogger("chatd.session")
READ_SIZE = 262144  # from the parent: a burst of deliveries in one call
CLIENT_READ_SIZE = 16384  # from the client: requests are small
IOV_MAX = 512
CPU_GRACE = 5  # CPU seconds between SIGXCPU and the kernel's SIGKILL
EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
FINAL_FLUSH = 2.0  # seconds to hand the parent our last words (a quit) before closing
ACK_POLL = 0.01  # seconds between looks at what the client has not acknowledged yet
LINGER_RESET = struct.pack("ii", 1, 0)  # close() resets the connection
LINGER_OFF = struct.pack("ii", 0, 0)  # close() ends the stream after what was sent


def close_inherited(keep: set[int]) -> None:
    """Close every fd the parent left us except `keep` (listener, other channels, db).

    closerange() is one close_range(2) per gap, where a loop over /proc/self/fd cost a
    system call per fd: with thousands of sessions open that was most of a fork's cost.
    """
    low = 0
    for fd in sorted(keep):
        if fd > low:
            os.closerange(low, fd)
        low = max(low, fd + 1)
    os.closerange(low, max(low, resource.getrlimit(resource.RLIMIT_NOFILE)[0]))


@dataclass
class Handed:
    """What a spare process is handed: its client and what followed on the channel."""

    sock: socket.socket
    token: str
    ip: str
    tls: bool  # it came to the TLS listener: the handshake comes first
    reader: EnvelopeReader = field(default_factory=EnvelopeReader)
    pending: list[tuple[int, memoryview]] = field(default_factory=list)


class ResourceLimit(Exception):
    """The session process hit a resource limit; `limit` names the setting."""

    def __init__(self, limit: str) -> None:
        super().__init__(limit)
        self.limit = limit


def _on_sigxcpu(signum: int, frame: object) -> None:
    # Raising (not recording) is deliberate: a process over its CPU budget may be stuck
    # in a loop that never returns to ours. The hard limit still kills it if this fails.
    raise ResourceLimit("max_cpu_seconds")


def prepare(config: Config, keep: set[int], session_id: str) -> None:
    """Fork hygiene, done first thing in the new process."""
    # Whatever the parent built is ours only to read: keep the collector off its pages.
    gc.freeze()
    close_inherited(keep | {0, 1, 2})
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    # The parent orchestrates shutdown; a terminal's ^C or hangup is for it alone.
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    logsetup.set_session(session_id)
    limits = [(resource.RLIMIT_NOFILE, config.max_files)]
    if config.max_memory_mb:
        limits.append((resource.RLIMIT_AS, config.max_memory_mb << 20))
    for which, value in limits:
        _soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, hard))
    if config.max_cpu_seconds:
        # The soft limit sends SIGXCPU, which ends the session with an error frame; the
        # kernel kills at the hard limit, CPU_GRACE seconds later, if that does not work.
        _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
        soft = config.max_cpu_seconds
        cap = soft + CPU_GRACE
        if hard != resource.RLIM_INFINITY:
            soft, cap = min(soft, hard), min(cap, hard)
        signal.signal(signal.SIGXCPU, _on_sigxcpu)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, cap))


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
        self.size = sum(map(len, keep))

    def send(self, sock: socket.socket) -> None:
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
            super().send(sock)
        finally:
            if (self.offset != 0) != self.reset_on_close:
                self.reset_on_close = not self.reset_on_close
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    LINGER_RESET if self.reset_on_close else LINGER_OFF)


def wait_for_client(chan: socket.socket) -> Handed | None:
    """A spare session process blocks here until the parent hands it a client socket.

    Returns the client socket, its token, its address and the channel's reader with the
    envelopes that followed the hand-over; None when the parent closed the channel
    instead (retired, or gone).
    """
    reader = EnvelopeReader()
    fds: list[int] = []
    while True:
        try:
            data, got, _flags, _addr = socket.recv_fds(chan, 65536, 4)
        except InterruptedError:
            continue
        except OSError:
            data, got = b"", []
        fds += got
        if not data:
            for fd in fds:
                os.close(fd)
            return None
        envelopes = reader.feed(data)
        for i, (kind, body) in enumerate(envelopes):
            ctrl = decode_control(body) if kind == CTRL else {}
            if ctrl.get("c") == channel.CLIENT and fds:
                for extra in fds[1:]:
                    os.close(extra)
                sock = socket.socket(fileno=fds[0])
                return Handed(sock, str(ctrl["token"]), str(ctrl["ip"]),
                              bool(ctrl.get("tls")), reader, envelopes[i + 1 :])


def serve_tls(sock: socket.socket, chan: socket.socket, config: Config, session_id: str,
              peer: str, context: ssl.SSLContext, reader: EnvelopeReader | None = None,
              pending: list[tuple[int, memoryview]] | None = None) -> int:
    """Serve a client of the TLS listener: the TLS handshake before anything else, within
    handshake_timeout (which then also bounds the hello), then serve() over TLS."""
    started = time.monotonic()
    tune_client_socket(sock, config)
    reader = reader or EnvelopeReader()
    pending = list(pending or [])
    stream = _tls_accept(sock, chan, context, started + config.handshake_timeout, reader,
                         pending)
    if stream is None:
        sock.close()
        return 0
    return serve(stream, chan, config, session_id, peer, reader, pending, started=started)


def _tls_accept(sock: socket.socket, chan: socket.socket, context: ssl.SSLContext,
                deadline: float, reader: EnvelopeReader,
                pending: list[tuple[int, memoryview]]) -> tls.TLSStream | None:
    """Do the server side of the TLS handshake; returns the stream (None if the handshake
    failed, or the parent meanwhile closed the channel or told us to close). Envelopes
    read meanwhile are added to `pending`, for serve()."""
    handshake = tls.ServerHandshake(context, sock, deadline)
    poller = select.poll()
    poller.register(chan, select.POLLIN)
    while not _told_to_close(pending):
        try:
            want = handshake.step(time.monotonic())
        except tls.HandshakeFailed as exc:
            log.info("TLS handshake failed: %s", exc)
            return None
        if not want:
            stream = handshake.stream()
            log.debug("TLS handshake done: %s", stream.version())
            return stream
        poller.register(sock, want)
        for fd, _ev in poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
            if fd == chan.fileno():
                data = _recv(chan)
                if data == b"":
                    return None  # the parent is gone: no session to start
                pending += reader.feed(data or b"")
    return None


def _told_to_close(envelopes: list[tuple[int, memoryview]]) -> bool:
    """Whether channel envelopes hold a close control (the parent is shutting down...)."""
    return any(kind == CTRL and channel.is_close(decode_control(body))
               for kind, body in envelopes)


def serve(sock: socket.socket, chan: socket.socket, config: Config, session_id: str,
          peer: str, reader: EnvelopeReader | None = None,
          pending: list[tuple[int, memoryview]] | None = None,
          started: float | None = None) -> int:
    """Serve one client until the session ends; returns the exit status.

    `sock` may be a tls.TLSStream; `started` is when the handshake deadline started
    (now, unless a TLS handshake came first).

    The common wakeup is the parent forwarding RAW frames while the client is quiet:
    that path makes no Session call, no selector change and no bytes copy (memoryview
    slices of the received block go to the client with one send). The Session is
    ticked only when it was fed something or its next deadline has come.
    """
    tune_client_socket(sock, config)
    chan.setblocking(False)
    monotonic = time.monotonic
    session = Session(config, monotonic() if started is None else started)
    # Plaintext a TLS stream holds is invisible to epoll: the loop reads it without waiting.
    tls_buffered = sock.buffered if isinstance(sock, tls.TLSStream) else None
    reader = reader or EnvelopeReader()
    to_client, to_broker = ClientOutbox(), Outbox()
    sfd, cfd = sock.fileno(), chan.fileno()
    ep = select.epoll(2)
    ep.register(sfd, EPOLLIN)
    ep.register(cfd, EPOLLIN)
    sock_mask = chan_mask = EPOLLIN
    client_open = broker_open = True
    deadline = session.next_deadline()
    client_queue = session.config.client_queue
    log.info("serving %s", peer)
    status = 0
    try:
        if pending and _from_broker(pending, session, to_client):
            deadline = monotonic()  # the Session was fed: tick it first thing
        while not session.ended:
            # Always read the parent: its controls (a close order above all) must get through.
            # What piles up for a client that does not read is bounded below (client_queue).
            if broker_open:
                want = EPOLLIN | EPOLLOUT if to_broker.chunks else EPOLLIN
                if want != chan_mask:
                    ep.modify(cfd, want)
                    chan_mask = want
            want = EPOLLIN | EPOLLOUT if to_client.chunks else EPOLLIN
            if want != sock_mask:
                ep.modify(sfd, want)
                sock_mask = want
            timeout = deadline - monotonic()
            held = tls_buffered is not None and client_open and tls_buffered()
            events = ep.poll(0.0 if held else 3600.0 if timeout > 3600.0
                             else timeout if timeout > 0.0 else 0.0)
            if held and all(fd != sfd for fd, _ev in events):
                events.append((sfd, EPOLLIN))
            now = monotonic()
            fed = now >= deadline  # the Session has something to do (or to be told)
            for fd, ev in events:
                if fd == sfd:
                    if sock_mask & EPOLLOUT and ev & ~EPOLLIN and not _send(to_client, sock):
                        client_open = False
                        session.client_closed()
                        fed = True
                    if ev & ~EPOLLOUT and client_open:
                        data = _recv_client(sock)
                        if data:
                            session.receive_data(data, now)
                            fed = True
                        elif data is not None:
                            client_open = False
                            session.client_closed()
                            fed = True
                elif fd == cfd:
                    if ev & ~EPOLLOUT:
                        data = _recv(chan)
                        if data is None:
                            pass
                        elif not data:
                            broker_open = False
                            ep.unregister(cfd)
                            log.warning("broker gone; waiting %.0fs for it", config.broker_grace)
                            session.broker_lost(now)
                            fed = True
                            continue
                        else:
                            fed = _from_broker(reader.feed(data), session, to_client) or fed
                    if (chan_mask & EPOLLOUT and ev & ~EPOLLIN and broker_open
                            and not _send(to_broker, chan)):
                        broker_open = False
                        ep.unregister(cfd)
                        session.broker_lost(now)
                        fed = True
            if fed:
                session.tick(monotonic())
                config = session.config
                client_queue = config.client_queue
                _drain_session(session, to_client, to_broker)
                deadline = session.next_deadline()
            if to_client.chunks and client_open and not _send(to_client, sock):
                client_open = False
                session.client_closed()
                deadline = session.next_deadline()
            if to_client.size > client_queue and not session.ended:
                session.fail("slow_consumer", f"over client_queue={client_queue} bytes "
                             "unread", limit="client_queue")
    except (MemoryError, ResourceLimit) as exc:
        # Over a limit this process alone dies of: free what we can and tell the client.
        limit = exc.limit if isinstance(exc, ResourceLimit) else "max_memory_mb"
        session.decoder.clear()
        to_client.discard()
        session.to_client.clear()
        log.error("session over its %s", limit, exc_info=isinstance(exc, MemoryError))
        session.fail("resource_limit", f"the session process hit its {limit}", limit=limit)
        status = 1
    ep.close()
    _finish(sock, chan if broker_open else None, session, to_client, to_broker, client_open)
    session.finished()
    log.info("session ended: %s", session.ended)
    return status


def _from_broker(envelopes: list[tuple[int, memoryview]], session: Session,
                 to_client: Outbox) -> bool:
    """RAW bodies to the client uncopied, controls to the Session; True if it was fed."""
    fed = False
    for kind, body in envelopes:
        if kind == RAW:
            to_client.add(body)
        elif kind == CTRL:
            session.control(decode_control(body))
            fed = True
    return fed


def _recv(sock: socket.socket) -> bytes | None:
    """Received bytes, b"" at end of stream or on error, None if nothing is ready."""
    try:
        return sock.recv(READ_SIZE)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


_CLIENT_BUF = bytearray(CLIENT_READ_SIZE)
_CLIENT_VIEW = memoryview(_CLIENT_BUF)


def _recv_client(sock: socket.socket) -> bytes | None:
    """Like _recv, for the client socket: into one reused buffer, copied out at size.

    `sock.recv(n)` mallocs n bytes and shrinks them for every read; for a client's
    many small frames over hours that fragments the heap and the session's memory
    creeps up without end (measured: about +0.7 MB per 10,000 small frames). The
    parent's channel keeps plain recv(): its reads are large, and a reused buffer
    there doubled the session's CPU per delivery in `chatd bench burst`.
    """
    try:
        size = sock.recv_into(_CLIENT_BUF)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""
    return _CLIENT_VIEW[:size].tobytes()


def _send(box: Outbox, sock: socket.socket) -> bool:
    """Send what the socket takes; False if the peer is gone (the box is emptied)."""
    try:
        box.send(sock)
        return True
    except OSError:
        box.clear()
        return False


def _drain_session(session: Session, to_client: Outbox, to_broker: Outbox) -> None:
    if session.drop_pending:
        to_client.discard()
        session.drop_pending = False
    if session.to_client:
        to_client.add(b"".join(session.to_client))
        session.to_client.clear()
    if session.to_broker:
        to_broker.add(b"".join(session.to_broker))
        session.to_broker.clear()


def _finish(sock: socket.socket, chan: socket.socket | None, session: Session,
            to_client: Outbox, to_broker: Outbox, client_open: bool) -> None:
    """Deliver the last frames (bounded in time), then close both ends.

    The parent gets our last words first. The client then has `close_grace` seconds to
    take every frame up to the last (a fatal error, when there is one); nothing new is
    queued meanwhile. The stream then ends cleanly after that frame. If the frames are
    not all handed to the kernel by then, the connection is reset instead: it never ends
    cleanly in the middle of a frame.
    """
    _drain_session(session, to_client, to_broker)
    if chan is not None:
        _flush_until(to_broker, chan, time.monotonic() + FINAL_FLUSH)
        chan.close()
    if client_open:
        deadline = time.monotonic() + session.config.close_grace
        if _flush_until(to_client, sock, deadline):
            _wait_delivered(sock, deadline)
            _discard_input(sock)  # unread input would make close() reset the connection
        else:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            log.info("client did not take its last frames within close_grace (or is gone): "
                     "resetting the connection")
    sock.close()


def _flush_until(box: Outbox, sock: socket.socket, deadline: float) -> bool:
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


def _wait_delivered(sock: socket.socket, deadline: float) -> None:
    """End our side of the stream and wait (to the deadline) until the client's kernel
    has acknowledged all of it, dropping what the client still sends."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        return
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    reading = True
    while _unacknowledged(sock) and (remaining := deadline - time.monotonic()) > 0:
        if poller.poll(min(remaining, ACK_POLL) * 1000) and reading:
            state = _discard_input(sock)
            if state == "gone":
                return
            if state == "closed":  # it may still read: keep waiting, without polling it
                poller.unregister(sock)
                reading = False


def _unacknowledged(sock: socket.socket) -> int:
    """Bytes (and the FIN) sent to the client that it has not acknowledged (SIOCOUTQ)."""
    buf = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, buf, True)
    except OSError:
        return 0
    return buf[0]


def _discard_input(sock: socket.socket) -> str:
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
