"""TLS for client connections (stdlib `ssl`, TLS 1.2 and later), outside the parent.

The parent builds the server context from `tls.cert` and `tls.key` (`ServerTLS`, at start
and again on SIGHUP) and accepts TCP connections on `tls.port`, but never reads a byte of
them. The session process it forks inherits the context and does the handshake itself
(`ServerHandshake`: non-blocking, advanced by the session's loop until a deadline), then
talks to its client through a `TLSStream`, a socket whose send and recv carry plaintext,
so the session loop is the same for TLS and plain TCP.

Both run OpenSSL over memory BIOs rather than `ssl.SSLSocket`, so that this module, not
OpenSSL, decides when bytes move: an SSLSocket write that would block must be retried with
the same bytes (the session's outbox may have dropped them meanwhile), and plaintext that
OpenSSL has already read off the socket is invisible to epoll (`TLSStream.buffered()`
says when there is some).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import errno
import hashlib
import logging
import select
import socket
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

log = logging.getLogger("chatd.tls")
MIN_VERSION = ssl.TLSVersion.TLSv1_2
# TLS 1.2 suites: forward-secret key exchange and AEAD ciphers only (Mozilla's
# "intermediate" list without DHE, which would need DH parameters). TLS 1.3 suites are
# OpenSSL's defaults, all of them fine.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
RAW_READ = 17408  # bytes off the socket per read: one whole TLS record (16 KiB + overhead)
# Plaintext one send() encrypts at most. Its ciphertext may wait in the stream when the
# socket is full, so this bounds what a stream holds beyond the kernel's send buffer.
WRITE_CAP = 65536


class TLSConfigError(Exception):
    """tls.cert or tls.key cannot be used; the message says which and why."""


class HandshakeFailed(Exception):
    """The client did not complete a TLS handshake; the message says why."""


def _reason(exc: ssl.SSLError) -> str:
    """OpenSSL's reason ("WRONG_VERSION_NUMBER") as words, else the exception's text."""
    reason = getattr(exc, "reason", None)
    return reason.lower().replace("_", " ") if reason else str(exc)


# ---- certificates and the server context ----

def cert_paths(values: dict[str, Any], config_file: Path | None) -> tuple[Path, Path | None]:
    """tls.cert and tls.key (None: the key is in the cert file), relative paths taken from
    the config file's directory, so they do not depend on where chatd was started."""
    base = config_file.parent if config_file is not None else Path.cwd()
    cert = base / values["tls_cert"]
    key = base / values["tls_key"] if values["tls_key"] else None
    return cert, key


def public_key_pin(der: bytes) -> str:
    """`sha256//` + base64 of the SHA-256 of a certificate's SubjectPublicKeyInfo (DER).

    The key, not the whole certificate: a certificate renewed with the same key keeps its
    pin, as an SSH host key does. It is the value curl's --pinnedpubkey takes, and
    `openssl x509 -in CERT -pubkey -noout | openssl pkey -pubin -outform der |
    openssl dgst -sha256 -binary | openssl enc -base64` prints it from a PEM file.
    """
    from asn1crypto import x509 as asn1_x509  # only for pins and log lines

    cert = asn1_x509.Certificate.load(der)
    spki = cert["tbs_certificate"]["subject_public_key_info"].dump()
    return "sha256//" + base64.b64encode(hashlib.sha256(spki).digest()).decode()


def describe_cert(path: Path) -> str:
    """Who the (first) certificate in a PEM file is for, until when, and its pin."""
    from asn1crypto import x509 as asn1_x509

    try:
        der = ssl.PEM_cert_to_DER_cert(path.read_text())
        cert = asn1_x509.Certificate.load(der)
        subject = cert.subject.human_friendly
        until = cert["tbs_certificate"]["validity"]["not_after"].native
        expired = " (EXPIRED)" if until < datetime.datetime.now(datetime.UTC) else ""
        return f"{subject}, valid until {until:%Y-%m-%d}{expired}, key {public_key_pin(der)}"
    except (OSError, ValueError) as exc:  # it loaded, so this is only a log line short
        return f"(not described: {exc})"


def create_context(cert: Path, key: Path | None) -> ssl.SSLContext:
    """A server context: TLS 1.2 minimum, CIPHERS, no compression or renegotiation."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MIN_VERSION
    ctx.set_ciphers(CIPHERS)
    ctx.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
                    | ssl.OP_NO_RENEGOTIATION | ssl.OP_SINGLE_ECDH_USE)
    # No TLS 1.3 session tickets: OpenSSL would send them with the first read or write
    # after the handshake, to clients that do not resume sessions anyway, and a client
    # that closes with them unread makes its kernel reset the connection.
    ctx.num_tickets = 0
    for what, path in (("tls.cert", cert), ("tls.key", key)):
        if path is not None and not path.is_file():
            raise TLSConfigError(f"{what}: {path} is not a readable file")
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        reason = getattr(exc, "reason", None)
        if reason == "KEY_VALUES_MISMATCH":
            raise TLSConfigError(f"tls.key {key} is not the key of tls.cert {cert}") from None
        where = f"tls.cert {cert}" + (f" / tls.key {key}" if key else "")
        raise TLSConfigError(f"cannot load {where}: {_reason(exc)} (PEM files expected)"
                             ) from None
    except OSError as exc:
        raise TLSConfigError(f"cannot read tls.cert {cert} or tls.key {key}: "
                             f"{exc.strerror or exc}") from None
    return ctx


class ServerTLS:
    """The context new TLS connections get. A reload builds a new one from the files and
    swaps it in only if that worked; sessions keep the context they started with."""

    def __init__(self, values: dict[str, Any], config_file: Path | None) -> None:
        """Raises TLSConfigError: at start-up a bad certificate stops chatd."""
        self.cert, self.key = cert_paths(values, config_file)
        self.context = create_context(self.cert, self.key)
        log.info("TLS certificate %s: %s", self.cert, describe_cert(self.cert))

    def reload(self, values: dict[str, Any], config_file: Path | None) -> bool:
        """Load the (possibly new) files; on any problem keep the old context, log why and
        return False."""
        cert, key = cert_paths(values, config_file)
        try:
            context = create_context(cert, key)
        except TLSConfigError as exc:
            log.error("SIGHUP: keeping the old TLS certificate: %s", exc)
            return False
        self.cert, self.key, self.context = cert, key, context
        log.info("SIGHUP: new TLS connections get %s: %s", cert, describe_cert(cert))
        return True


# ---- the handshake and the stream, in the session process ----

class _Pipe:
    """OpenSSL over memory BIOs on a non-blocking socket, plus the ciphertext the socket
    has not taken yet (`backlog`)."""

    def __init__(self, ssl_obj: ssl.SSLObject, incoming: ssl.MemoryBIO,
                 outgoing: ssl.MemoryBIO) -> None:
        self.ssl, self.incoming, self.outgoing = ssl_obj, incoming, outgoing
        self.backlog = bytearray()

    def flush(self, sock: socket.socket) -> None:
        """Move OpenSSL's output to the socket, as much as it takes now. Raises OSError
        when the peer is gone."""
        out = self.outgoing.read()
        if out:
            self.backlog += out
        while self.backlog:
            try:
                sent = socket.socket.send(sock, self.backlog)
            except (BlockingIOError, InterruptedError):
                return
            del self.backlog[:sent]

    def pull(self, sock: socket.socket) -> bool:
        """Feed OpenSSL what the socket has: True if it got bytes or the end of stream,
        False if there was nothing. Raises OSError when the connection failed."""
        try:
            data = socket.socket.recv(sock, RAW_READ)
        except (BlockingIOError, InterruptedError):
            return False
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()
        return True


class ServerHandshake:
    """One server-side TLS handshake on a non-blocking socket.

    Call `step(now)` at the start and whenever the socket is ready or the deadline has
    come; it returns the poll events to wait for, or 0 when the handshake is done and
    `stream()` is ready. It raises HandshakeFailed on a bad handshake, a closed
    connection, or at `deadline`.
    """

    def __init__(self, context: ssl.SSLContext, sock: socket.socket, deadline: float) -> None:
        self.sock, self.deadline = sock, deadline
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._pipe = _Pipe(context.wrap_bio(incoming, outgoing, server_side=True),
                           incoming, outgoing)
        self._done = False

    def step(self, now: float) -> int:
        pipe = self._pipe
        try:
            while not self._done:
                try:
                    pipe.ssl.do_handshake()
                    self._done = True
                except ssl.SSLWantReadError:
                    pipe.flush(self.sock)
                    if pipe.backlog:  # the client needs our flight before it answers
                        break
                    if not pipe.pull(self.sock):
                        break
            pipe.flush(self.sock)
        except ssl.SSLEOFError:
            raise HandshakeFailed("the client closed the connection during it") from None
        except ssl.SSLError as exc:
            self._send_alert()
            raise HandshakeFailed(_reason(exc)) from None
        except OSError as exc:
            raise HandshakeFailed(f"connection failed: {exc.strerror or exc}") from None
        if self._done and not pipe.backlog:
            return 0
        if now >= self.deadline:
            raise HandshakeFailed("not completed within keepalive.handshake_timeout")
        # Done but not all sent: the client may wait for our last flight (a TLS 1.2
        # Finished) before it says anything, so it must leave before the session starts.
        return select.POLLOUT if pipe.backlog else select.POLLIN

    def _send_alert(self) -> None:
        """Best effort: the alert OpenSSL wrote tells the client why."""
        with contextlib.suppress(OSError):
            self._pipe.flush(self.sock)

    def stream(self) -> TLSStream:
        """The connection as a TLSStream (the socket object given is detached)."""
        if not self._done:
            raise RuntimeError("the TLS handshake is not done")
        return TLSStream(self.sock, self._pipe)


class TLSStream(socket.socket):
    """A connected socket whose send/sendmsg/recv/recv_into carry plaintext over TLS.

    Non-blocking, and like a socket where the session loop can tell: send() counts as sent
    only what the kernel has taken, with one exception that keeps the loop's invariants.
    When the socket cannot take all the ciphertext of the plaintext just encrypted, the
    rest waits here and send() reports one byte fewer than it encrypted. The caller's
    outbox therefore still holds a partly sent frame, so it keeps asking to write (which
    sends what waits here first), it keeps the reset-on-close that stops a dead session
    from ending the stream cleanly mid-frame, and its next send starts with that byte,
    which is then counted without being encrypted again.

    Plaintext OpenSSL has read but recv_into() had no room for is invisible to epoll:
    the loop asks `buffered()` and reads again without waiting.
    """

    def __init__(self, sock: socket.socket, pipe: _Pipe) -> None:
        timeout = sock.gettimeout()
        super().__init__(sock.family, sock.type, sock.proto, fileno=sock.detach())
        self.settimeout(timeout)
        self._pipe = pipe
        self._owed: int | None = None  # the byte encrypted but not yet reported sent
        self._shut = False  # our close_notify is out: reads drain raw bytes

    def version(self) -> str | None:
        return self._pipe.ssl.version()

    def buffered(self) -> bool:
        """Whether plaintext (or records not yet decrypted) waits in OpenSSL."""
        return self._pipe.ssl.pending() > 0 or self._pipe.incoming.pending > 0

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        """Plaintext into `buffer`; 0 at the end of stream (with or without the client's
        close_notify); BlockingIOError when there is none yet; OSError (ssl.SSLError)
        when the client broke TLS."""
        if self._shut:
            return super().recv_into(buffer, nbytes, flags)
        view = memoryview(buffer).cast("B")
        size = nbytes or len(view)
        pipe = self._pipe
        filled = 0
        while filled < size:
            try:
                # With a buffer it returns a count (typeshed says bytes either way).
                got = cast(int, pipe.ssl.read(size - filled, view[filled:size]))
            except ssl.SSLWantReadError:
                self._flush_quietly()  # a read can make OpenSSL answer (a key update)
                if not pipe.pull(self):
                    if filled:
                        break
                    raise BlockingIOError(errno.EAGAIN, "no TLS data yet") from None
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break  # close_notify, or the connection ended without one
            except ssl.SSLError as exc:  # a broken record, an alert from the client...
                log.info("TLS error from the client: %s", _reason(exc))
                self._flush_quietly()  # our alert, if OpenSSL wrote one
                raise
            if not got:
                break
            filled += got
        self._flush_quietly()
        return filled

    def _flush_quietly(self) -> None:
        """Flush what a read made OpenSSL write; a failure shows at the next send (the
        plaintext read must not be lost to it)."""
        with contextlib.suppress(OSError):
            self._pipe.flush(self)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        buf = bytearray(bufsize)
        return bytes(buf[: self.recv_into(buf, bufsize, flags)])

    def send(self, data: Any, flags: int = 0) -> int:
        return self.sendmsg([data])

    def sendmsg(self, buffers: Iterable[Any], *args: Any) -> int:
        """Encrypt the leading buffers (whole ones, up to WRITE_CAP bytes; the first one
        cut there if it is longer) and send; returns the plaintext bytes to count as sent
        (see the class docstring). BlockingIOError while earlier ciphertext waits."""
        pipe = self._pipe
        if pipe.backlog:
            pipe.flush(self)
            if pipe.backlog:
                raise BlockingIOError(errno.EAGAIN, "TLS records still waiting")
        views = [memoryview(b).cast("B") for b in buffers]
        counted = 0
        if self._owed is not None:  # its ciphertext is out now: count it
            if not views or not views[0] or views[0][0] != self._owed:
                raise RuntimeError("TLSStream.send: the caller did not resend the byte owed")
            self._owed = None
            views[0] = views[0][1:]
            counted = 1
        parts: list[memoryview] = []
        size = 0
        for view in views:
            if size + len(view) > WRITE_CAP:
                if not parts:
                    parts.append(view[:WRITE_CAP])
                    size = WRITE_CAP
                break
            parts.append(view)
            size += len(view)
        if not size:
            return counted
        plain = parts[0] if len(parts) == 1 else b"".join(parts)
        pipe.ssl.write(plain)  # into a memory BIO: always whole
        pipe.flush(self)
        if pipe.backlog:
            self._owed = plain[-1]
            return counted + size - 1
        return counted + size

    def sendall(self, data: Any, flags: int = 0) -> None:
        raise NotImplementedError("TLSStream is non-blocking: use send()")

    def shutdown(self, how: int) -> None:
        """Send close_notify (as far as the socket takes it) before ending our side."""
        if how != socket.SHUT_RD and not self._shut:
            self._shut = True
            # SSLWantReadError: close_notify is written; we do not wait for the client's.
            with contextlib.suppress(ssl.SSLError):
                self._pipe.ssl.unwrap()
            self._flush_quietly()
        super().shutdown(how)
