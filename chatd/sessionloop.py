"""The session process's loop: small handlers between the client socket, the broker
channel and the Session (the sans-I/O core that decides everything)."""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import time

from chatd import channel, orphan, tls
from chatd.channel import CTRL, ENVELOPE, RAW, EnvelopeReader, decode_control
from chatd.config import Config
from chatd.frontends import Codec, IrcCodec, NativeCodec
from chatd.outbox import (
    LINGER_RESET,
    RESIDENT,
    ClientOutbox,
    Outbox,
    Receiver,
    discard_input,
    flush_until,
    recv_client,
    send_or_drop,
    tune_client_socket,
    wait_delivered,
)
from chatd.session import Session

log = logging.getLogger("chatd.session")
EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
EPOLLHUP, EPOLLERR = select.EPOLLHUP, select.EPOLLERR
FINAL_FLUSH = 2.0  # seconds to hand the parent our last words (a quit) before closing
Envelopes = list[tuple[int, memoryview]]


def now_ms() -> int:
    """The Session's clock: monotonic, in integer milliseconds."""
    return time.monotonic_ns() // 1_000_000


class ResourceLimit(Exception):
    """The session process hit a resource limit; `limit` names the setting."""

    def __init__(self, limit: str) -> None:
        super().__init__(limit)
        self.limit = limit


class Loop:
    """Serve one client until the session ends.

    The common wakeup is the parent forwarding RAW frames while the client is quiet:
    that path makes no Session call, no selector change and no bytes copy (memoryview
    slices of the received block go to the client with one send). The Session is
    ticked only when it was fed something or its next deadline has come.

    What the client's bytes mean is the codec's business (chatd/frontends.py): the
    native protocol's, or IRC's when the connection came to the IRC listener.
    """

    def __init__(self, sock: socket.socket | tls.TLSStream, chan: socket.socket,
                 config: Config, peer: str, reader: EnvelopeReader, pending: Envelopes,
                 started: float, irc: bool = False,
                 adoption: orphan.Adoption | None = None) -> None:
        """`sock` may be a tls.TLSStream; `started` is when the handshake deadline started
        (now, unless a TLS handshake came first); `irc`: the client speaks IRC;
        `adoption`: how a next parent can take this session in if ours dies."""
        self.sock, self.chan, self.peer = sock, chan, peer
        self.adoption = adoption
        self.cfd = chan.fileno()
        self.reader, self.pending = reader, pending
        self.session = Session(config, int(started * 1000))
        # Plaintext a TLS stream holds is invisible to epoll: the loop reads it without
        # waiting.
        self.tls_buffered = sock.buffered if isinstance(sock, tls.TLSStream) else None
        self.to_client, self.to_broker = ClientOutbox(), Outbox()
        self.codec: Codec = IrcCodec(self.session, self.to_client, int(started * 1000),
                                     self.tls_buffered is not None) \
            if irc else NativeCodec(self.session, self.to_client)
        # The native fast path: a RAW frame goes to the outbox with no call of ours.
        self.forward_raw = self.to_client.add if self.codec.forwards_raw else None
        # ... and the loop of steady(), when nothing else is going on.
        self.may_relay = self.forward_raw is not None and self.tls_buffered is None
        self.client_open = self.broker_open = True
        self.fed = False  # the Session was fed something: tick it and take its output
        self.ep = select.epoll(2)
        self.receive = Receiver()
        self.sock_mask = self.chan_mask = EPOLLIN

    def serve(self) -> int:
        """Returns 1 if the process hit a resource limit, else 0 (see child.EXIT_*)."""
        sock, chan, session = self.sock, self.chan, self.session
        tune_client_socket(sock, session.config)
        chan.setblocking(False)
        sfd = sock.fileno()
        monotonic_ns = time.monotonic_ns
        self.ep.register(sfd, EPOLLIN)
        self.ep.register(self.cfd, EPOLLIN)
        log.info("serving %s", self.peer)
        status = 0
        try:
            self.on_envelopes(self.pending, now_ms())
            deadline = now_ms() if self.fed else session.next_deadline()
            while not session.ended:
                self.watch()
                if self.sock_mask == self.chan_mask == EPOLLIN and self.may_relay and \
                        self.client_open and self.broker_open and not self.reader.buffered():
                    events = self.steady(deadline)
                else:
                    timeout = (deadline - monotonic_ns() // 1_000_000) / 1000
                    held = self.tls_buffered is not None and self.client_open and \
                        not self.codec.paused and self.tls_buffered()
                    events = self.ep.poll(0.0 if held else 3600.0 if timeout > 3600.0 else
                                          timeout if timeout > 0.0 else 0.0)
                    if held and all(fd != sfd for fd, _ev in events):
                        events.append((sfd, EPOLLIN))
                now = monotonic_ns() // 1_000_000  # (now_ms(), inline: once a wakeup)
                if now >= deadline:  # the Session has something to do (or to be told)
                    self.fed = True
                    if not events:  # first what came meanwhile: we may be waking late
                        events = self.ep.poll(0.0)
                for fd, ev in events:
                    if fd == sfd:
                        self.on_client(ev, now)
                    elif fd == self.cfd:
                        self.on_channel(ev, now)
                    else:
                        self.on_adopt(now)
                if self.fed:
                    self.on_session(now_ms())
                    deadline = session.next_deadline()
                if self.flush():
                    self.on_session(now_ms())
                    # (an IRC codec may have fed the Session again meanwhile: no waiting)
                    deadline = now_ms() if self.fed else session.next_deadline()
        except (MemoryError, ResourceLimit) as exc:
            # Over a limit this process alone dies of: free what we can and tell the client.
            limit = exc.limit if isinstance(exc, ResourceLimit) else "max_memory_mb"
            session.decoder.clear()
            self.to_client.discard()
            session.to_client.clear()
            log.error("session over its %s", limit, exc_info=isinstance(exc, MemoryError))
            session.fail("resource_limit", f"the session process hit its {limit}", limit=limit)
            status = 1
        self.ep.close()
        self.finish()
        log.info("session ended: %s", session.ended)
        return status

    # ---- handlers ----

    def watch(self) -> None:
        """Always read the parent: its controls (a close order above all) must get through.
        What piles up for a client that does not read is bounded (client_queue)."""
        if self.broker_open:
            want = EPOLLIN | EPOLLOUT if self.to_broker.chunks else EPOLLIN
            if want != self.chan_mask:
                self.ep.modify(self.chan, want)
                self.chan_mask = want
        # A paused codec (IRC commands waiting for answers) leaves the input unread.
        want = (0 if self.codec.paused else EPOLLIN) | \
            (EPOLLOUT if self.to_client.chunks else 0)
        if want != self.sock_mask:
            self.ep.modify(self.sock.fileno(), want)
            self.sock_mask = want

    def on_client(self, ev: int, now: int) -> None:
        if self.sock_mask & EPOLLOUT and ev & ~EPOLLIN:
            self.send_client()
        # A paused codec reads nothing, unless the client is gone: epoll reports a hang-up
        # or an error whatever the mask, and unread it would wake us again at once.
        if ev & ~EPOLLOUT and self.client_open and (not self.codec.paused or
                                                    ev & (EPOLLHUP | EPOLLERR)):
            data = recv_client(self.sock)
            if data:
                self.fed = self.codec.client_data(data, now)
            elif data is not None:
                self.client_lost()

    def on_channel(self, ev: int, now: int) -> None:
        if ev & ~EPOLLOUT:
            data = self.receive.read(self.chan)
            if data is not None:
                self.on_channel_data(data, now)
        if self.chan_mask & EPOLLOUT and ev & ~EPOLLIN and self.broker_open:
            self.send_broker(now)

    def on_channel_data(self, data: memoryview, now: int) -> None:
        """What a read of the channel got (a view of the receive buffer; empty: the end)."""
        if not data:
            log.warning("broker gone; waiting %.0fs for it", self.session.config.broker_grace)
            self.broker_lost(now)
            return
        # RAW bodies are views of the receive buffer: what the client does not take now
        # is copied out of it before the next read.
        envelopes = self.reader.feed(data)
        if len(envelopes) == 1 and envelopes[0][0] == RAW and \
                self.forward_raw is not None and not self.to_client.chunks and \
                self.client_open:
            self.relay(envelopes[0][1])
        else:
            self.on_envelopes(envelopes, now)
            if self.to_client.chunks and self.client_open:
                self.send_client()
        if self.to_client.chunks or len(data) > RESIDENT:
            self.receive.settle(self.to_client, len(data))

    def steady(self, deadline: float) -> list[tuple[int, int]]:
        """The wakeups of a steady chat, natively, in a loop of their own: the channel
        alone is readable and holds one whole RAW envelope, which goes to the client with
        one send() (as relay() does, from the receive buffer in place: no envelope list,
        no copy). The loop's general bookkeeping per wakeup cost more than the relay
        itself. Runs while the loop's state stays that of its caller's test (nothing
        queued either way, nothing partial, both ends open).

        Returns the events of the first other wakeup, for the general loop; [] when it
        handled one itself that changed the state (a read that was not one envelope, a
        client that did not take all) or when the Session's deadline came.
        """
        poll, recv_into, send = self.ep.poll, self.chan.recv_into, self.sock.send
        to_client = self.to_client
        buffer, view = self.receive.buffer, self.receive.view
        unpack, monotonic_ns = orphan.ONE_MESSAGE.unpack_from, time.monotonic_ns
        delivered = self.adoption.delivered if self.adoption is not None else None
        alone = [(self.cfd, EPOLLIN)]
        header, whole, mark = ENVELOPE.size, orphan.ONE_MESSAGE.size, orphan.MESSAGE_MARK
        while True:
            timeout = (deadline - monotonic_ns() // 1_000_000) / 1000
            if timeout <= 0.0:
                return []
            events = poll(timeout if timeout < 3600.0 else 3600.0)
            if events != alone:
                return events
            try:
                size = recv_into(view)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                size = 0
            # The envelope's header and, if it holds one `message` frame, the frame's
            # id, in place. (A read shorter than a header fails the length test on
            # stale bytes.)
            kind, length, frame, marker, code = unpack(buffer)
            if kind != RAW or header + length != size or size > RESIDENT:
                self.on_channel_data(view[:size], monotonic_ns() // 1_000_000)
                return []
            if delivered is not None:
                if marker == mark and frame + 4 == length and size >= whole:
                    delivered.offer(code)
                else:
                    delivered.feed_in(buffer, header, size)
            body = view[header:size]
            try:  # (Outbox.push's send, inline: a call more cost a tenth of the wakeup)
                sent = send(body)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.client_lost()
                return []
            if sent < length:  # the client did not take it all
                to_client.keep(body, sent)
                self.send_client()
                self.receive.settle(to_client, size)
                return []

    def relay(self, body: memoryview) -> None:
        """The common wakeup, natively: on_envelopes() and send_client() for one RAW body
        and an empty outbox, as one send(); only what the client does not take is queued
        (and the outbox then tells the socket how to close mid-frame)."""
        if self.adoption is not None:
            self.adoption.delivered.feed(body)
        try:
            self.to_client.push(body, self.sock)
        except OSError:
            self.client_lost()
            return
        if self.to_client.chunks:
            self.send_client()

    def on_envelopes(self, envelopes: Envelopes, now: int) -> None:
        """RAW bodies to the client (natively: uncopied), controls to the Session."""
        forward_raw = self.forward_raw
        adoption = self.adoption
        for kind, body in envelopes:
            if kind == RAW:
                if forward_raw is not None:
                    forward_raw(body)
                else:
                    self.codec.raw(body, now)
                if adoption is not None:
                    adoption.delivered.feed(body)
            elif kind == CTRL:
                ctrl = decode_control(body)
                if ctrl.get("c") == channel.STATE:
                    if adoption is not None:
                        adoption.state = ctrl
                        adoption.delivered.upto(ctrl.get("upto"))
                    continue
                self.session.control(ctrl)
                self.fed = True
        if self.codec.take_fed():
            self.fed = True

    def on_session(self, now: int) -> None:
        """Tick the Session and take what it produced."""
        self.fed = False
        self.session.tick(now)
        self.drain()

    def flush(self) -> bool:
        """Send both ways as far as the sockets take; True if the Session must hear of
        something (a peer gone, or the client over its queue)."""
        session = self.session
        was = session.ended
        if self.to_broker.chunks and self.broker_open:
            self.send_broker(now_ms())
        if self.to_client.chunks and self.client_open:
            self.send_client()
        size = self.to_client.size
        if size and size > (queue := session.config.client_queue) and not session.ended:
            session.fail("slow_consumer", f"over client_queue={queue} bytes unread",
                         limit="client_queue")
        return self.fed or session.ended != was  # (on_session cleared fed)

    def send_client(self) -> None:
        if not send_or_drop(self.to_client, self.sock):
            self.client_lost()

    def send_broker(self, now: int) -> None:
        if not send_or_drop(self.to_broker, self.chan):
            self.broker_lost(now)

    def client_lost(self) -> None:
        self.client_open = False
        self.session.client_closed()
        self.fed = True

    def broker_lost(self, now: int) -> None:
        if self.broker_open:
            self.broker_open = False
            self.ep.unregister(self.chan)
        self.session.broker_lost(now)
        self.fed = True
        adoption = self.adoption
        if adoption is not None and not adoption.possible:
            adoption.listener.close()  # not welcomed yet: nothing to re-register, and a
            self.adoption = None  # next parent must not wait for us
        elif adoption is not None and not adoption.watching:
            self.ep.register(adoption.listener, EPOLLIN)  # a next parent may come for us
            adoption.watching = True

    def on_adopt(self, now: int) -> None:
        """A would-be parent connected: re-register with it, and it is our channel."""
        adoption = self.adoption
        assert adoption is not None
        conn = orphan.accept(adoption.listener, adoption.parent_uid)
        if conn is None or self.session.ended:
            if conn is not None:
                conn.close()
            return
        self.ep.unregister(adoption.listener)
        adoption.watching = False
        self.chan.close()
        self.chan, self.cfd, self.reader = conn, conn.fileno(), EnvelopeReader()
        orphan.restart(self.to_broker, adoption.registration())
        self.ep.register(self.cfd, EPOLLIN | EPOLLOUT)
        self.chan_mask = EPOLLIN | EPOLLOUT
        self.broker_open = True
        self.session.broker_back()
        self.fed = True
        log.warning("adopted by a new parent; re-registering after message id %d",
                    adoption.delivered.last)

    def drain(self) -> None:
        session = self.session
        if session.drop_pending:
            self.to_client.discard()
            session.drop_pending = False
        self.codec.drain(now_ms())
        if self.codec.take_fed():
            self.fed = True
        if session.to_broker:
            self.to_broker.add(b"".join(session.to_broker))
            session.to_broker.clear()

    # ---- the end ----

    def finish(self) -> None:
        """Deliver the last frames (bounded in time), then close both ends.

        The parent gets our last words first. The client then has `close_grace` seconds
        to take every frame up to the last (a fatal error, when there is one); nothing
        new is queued meanwhile. The stream then ends cleanly after that frame. If the
        frames are not all handed to the kernel by then, the connection is reset
        instead: it never ends cleanly in the middle of a frame.
        """
        self.drain()
        if self.broker_open:
            flush_until(self.to_broker, self.chan, time.monotonic() + FINAL_FLUSH)
            self.chan.close()
        sock = self.sock
        if self.client_open:
            deadline = time.monotonic() + self.session.config.close_grace
            if flush_until(self.to_client, sock, deadline):
                wait_delivered(sock, deadline)
                discard_input(sock)  # unread input would make close() reset the connection
            else:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
                log.info("client did not take its last frames within close_grace (or is "
                         "gone): resetting the connection")
        sock.close()
        self.session.finished()
