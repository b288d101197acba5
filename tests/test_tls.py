"""chatd.tls: the server context, its reload, the non-blocking handshake and TLSStream,
with real handshakes over loopback TCP against Python's own TLS client.

The certificates are test fixtures in tests/tls (tests/tls/make-certs.sh), valid from 2000
to 9999 so that no test depends on the date.
"""

from __future__ import annotations

import logging
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chatd import tls
from chatd.outbox import ClientOutbox
from chatd.protocol import pack

TLS_DIR = Path(__file__).parent / "tls"
CERT, KEY = TLS_DIR / "server.pem", TLS_DIR / "server.key"
OTHER_CERT, OTHER_KEY = TLS_DIR / "other.pem", TLS_DIR / "other.key"


def client_context(**versions: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=TLS_DIR / "ca.pem")
    for attr, version in versions.items():
        setattr(ctx, attr, version)
    return ctx


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """(server end, client end) of a loopback TCP connection; the server end non-blocking."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=10)
        server, _ = listener.accept()
    server.setblocking(False)
    return server, client


class Peer(threading.Thread):
    """Python's TLS client on the client end, in a thread: `work(tls socket)` after the
    handshake; `error` holds what went wrong."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext,
                 work: Callable[[ssl.SSLSocket], object] = lambda s: None) -> None:
        super().__init__(daemon=True)
        self.sock, self.ctx, self.work = sock, ctx, work
        self.error: BaseException | None = None
        self.result: object = None

    def run(self) -> None:
        try:
            with self.ctx.wrap_socket(self.sock, server_hostname="localhost") as s:
                self.result = self.work(s)
        except BaseException as exc:
            self.error = exc

    def finish(self) -> object:
        self.join(20)
        assert not self.is_alive(), "the TLS client thread hung"
        if self.error is not None:
            raise self.error
        return self.result


def drive(hs: tls.ServerHandshake, timeout: float = 10.0) -> tls.TLSStream:
    """What the session loop does: step, then wait for what the handshake wants."""
    while True:
        want = hs.step(time.monotonic())
        if not want:
            return hs.stream()
        poller = select.poll()
        poller.register(hs.sock, want)
        poller.poll(max(0.0, hs.deadline - time.monotonic()) * 1000)


def read_exactly(stream: tls.TLSStream, size: int, chunk: int = 16384) -> bytes:
    """Read plaintext the way the session loop does: wait on the fd unless buffered()."""
    out = bytearray()
    buf = bytearray(chunk)
    deadline = time.monotonic() + 20
    while len(out) < size:
        assert time.monotonic() < deadline, f"stalled at {len(out)} of {size} bytes"
        if not stream.buffered():
            select.select([stream], [], [], 1.0)
        try:
            got = stream.recv_into(buf)
        except BlockingIOError:
            continue
        assert got, "end of stream"
        out += buf[:got]
    return bytes(out)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server, client = tcp_pair()
    yield server, client
    server.close()
    client.close()


def connect(pair: tuple[socket.socket, socket.socket], ctx: ssl.SSLContext | None = None,
            work: Callable[[ssl.SSLSocket], object] = lambda s: None,
            server_ctx: ssl.SSLContext | None = None) -> tuple[tls.TLSStream, Peer]:
    server, client = pair
    peer = Peer(client, ctx or client_context(), work)
    peer.start()
    hs = tls.ServerHandshake(server_ctx or tls.create_context(CERT, KEY), server,
                             time.monotonic() + 10)
    return drive(hs), peer


# ---- the context ----

@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_handshake_and_plaintext_both_ways(pair, version) -> None:
    def work(s: ssl.SSLSocket) -> bytes:
        s.sendall(b"hello from the client")
        return s.recv(100)

    stream, peer = connect(pair, client_context(maximum_version=version), work)
    assert stream.version() == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]
    assert read_exactly(stream, 21) == b"hello from the client"
    assert stream.send(b"hello from the server") == 21
    assert peer.finish() == b"hello from the server"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_protocols_below_tls_1_2_are_refused(pair) -> None:
    ctx = client_context(minimum_version=ssl.TLSVersion.TLSv1,
                         maximum_version=ssl.TLSVersion.TLSv1_1)
    ctx.set_ciphers("ALL:@SECLEVEL=0")  # let the client offer them at all
    server, client = pair
    peer = Peer(client, ctx)
    peer.start()
    hs = tls.ServerHandshake(tls.create_context(CERT, KEY), server, time.monotonic() + 10)
    with pytest.raises(tls.HandshakeFailed):
        drive(hs)
    with pytest.raises(ssl.SSLError, match="protocol version"):  # the server's alert
        peer.finish()


def test_the_context_offers_only_forward_secret_aead_suites() -> None:
    ctx = tls.create_context(CERT, KEY)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(c["aead"] and c["kea"] == "kx-ecdhe" for c in tls12)


def test_cert_and_key_in_one_file(tmp_path) -> None:
    both = tmp_path / "both.pem"
    both.write_text(CERT.read_text() + KEY.read_text())
    tls.create_context(both, None)


@pytest.mark.parametrize("cert, key, words", [
    ("missing.pem", KEY, "tls.cert"),
    (CERT, "missing.key", "tls.key"),
    (CERT, OTHER_KEY, "is not the key of"),
    ("garbage.pem", KEY, "PEM"),
])
def test_unusable_files_say_what_is_wrong(tmp_path, cert, key, words) -> None:
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    with pytest.raises(tls.TLSConfigError, match=words):
        tls.create_context(tmp_path / cert, tmp_path / key)


def test_reload_swaps_the_context_or_keeps_the_old_one(pair, tmp_path, caplog) -> None:
    values = {"tls_cert": str(CERT), "tls_key": str(KEY)}
    server_tls = tls.ServerTLS(values, None)
    first = server_tls.context
    caplog.set_level(logging.INFO, "chatd.tls")
    assert not server_tls.reload({**values, "tls_key": str(OTHER_KEY)}, None)
    assert server_tls.context is first
    assert "keeping the old TLS certificate" in caplog.text
    assert "is not the key of" in caplog.text
    # Relative paths are taken from the config file's directory.
    assert server_tls.reload({"tls_cert": "other.pem", "tls_key": "other.key"},
                             TLS_DIR / "chatd.toml")
    assert server_tls.context is not first and server_tls.cert == OTHER_CERT

    peer_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    peer_ctx.check_hostname, peer_ctx.verify_mode = False, ssl.CERT_NONE
    stream, peer = connect(pair, peer_ctx, lambda s: s.getpeercert(binary_form=True),
                           server_ctx=server_tls.context)
    der = peer.finish()
    assert tls.public_key_pin(der) == tls.public_key_pin(
        ssl.PEM_cert_to_DER_cert(OTHER_CERT.read_text()))
    stream.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl tool")
def test_the_pin_is_the_one_openssl_computes() -> None:
    pubkey = subprocess.run(["openssl", "x509", "-in", str(CERT), "-pubkey", "-noout"],
                            capture_output=True, check=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=pubkey,
                         capture_output=True, check=True).stdout
    import base64
    import hashlib

    expected = "sha256//" + base64.b64encode(hashlib.sha256(der).digest()).decode()
    assert tls.public_key_pin(ssl.PEM_cert_to_DER_cert(CERT.read_text())) == expected
    assert expected in tls.describe_cert(CERT)


# ---- the handshake ----

def test_a_silent_client_fails_at_the_deadline(pair) -> None:
    server, _client = pair
    start = time.monotonic()
    hs = tls.ServerHandshake(tls.create_context(CERT, KEY), server, start + 5)
    assert hs.step(start) == select.POLLIN  # nothing from the client yet: wait to read
    with pytest.raises(tls.HandshakeFailed, match="handshake_timeout"):
        hs.step(start + 5)


def test_a_plain_chatd_client_fails_the_handshake(pair) -> None:
    server, client = pair
    client.sendall(pack({"type": "hello", "version": 1, "nick": "alice"}))
    hs = tls.ServerHandshake(tls.create_context(CERT, KEY), server, time.monotonic() + 10)
    with pytest.raises(tls.HandshakeFailed) as failed:
        drive(hs)
    assert str(failed.value)  # OpenSSL's reason in words, for the log


def test_a_client_that_closes_mid_handshake_fails_it(pair) -> None:
    server, client = pair
    client.close()
    hs = tls.ServerHandshake(tls.create_context(CERT, KEY), server, time.monotonic() + 10)
    with pytest.raises(tls.HandshakeFailed, match="closed"):
        drive(hs)


def test_a_client_that_distrusts_the_certificate_fails_it(pair) -> None:
    server, client = pair
    peer = Peer(client, ssl.create_default_context())  # the system store: no test CA
    peer.start()
    hs = tls.ServerHandshake(tls.create_context(CERT, KEY), server, time.monotonic() + 10)
    with pytest.raises(tls.HandshakeFailed):
        drive(hs)
    with pytest.raises(ssl.SSLCertVerificationError):
        peer.finish()


# ---- the stream ----

def test_plaintext_openssl_holds_is_reported_buffered(pair) -> None:
    """A read with less room than a record leaves plaintext epoll cannot see."""
    payload = bytes(range(256)) * 160  # 40 KiB: three records
    stream, peer = connect(pair, work=lambda s: s.sendall(payload))
    peer.finish()
    buf = bytearray(100)
    while True:  # the first bytes may take a moment to arrive
        try:
            first = stream.recv_into(buf)
            break
        except BlockingIOError:
            select.select([stream], [], [], 1.0)
    assert first == 100 and stream.buffered()
    assert bytes(buf) + read_exactly(stream, len(payload) - 100, 4096) == payload
    assert not stream.buffered()


def test_a_large_write_to_a_slow_reader_keeps_the_outbox_invariants(pair) -> None:
    """ClientOutbox (the session's outbox towards its client) over a TLSStream whose
    socket is full: bytes wait as ciphertext, the outbox still shows a partly sent frame
    (so its reset-on-close is on), and everything arrives once, in order."""
    frames = [pack({"type": "message", "text": f"{i:05d}" + "x" * 900}) for i in range(3000)]
    expected = b"".join(frames)
    go = threading.Event()

    def work(s: ssl.SSLSocket) -> bytes:
        go.wait(10)  # read nothing until the server's socket is full
        out = bytearray()
        while len(out) < len(expected):
            data = s.recv(65536)
            if not data:
                break
            out += data
        return bytes(out)

    stream, peer = connect(pair, work=work)
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    box = ClientOutbox()
    for frame in frames:
        box.add(frame)
    seen_waiting = False
    deadline = time.monotonic() + 30
    while box.chunks:
        assert time.monotonic() < deadline, "the outbox never drained"
        box.send(stream)
        if stream._pipe.backlog:
            seen_waiting = True
            assert box.chunks and box.offset and box.reset_on_close
            go.set()
        select.select([], [stream], [], 1.0)
    assert seen_waiting and not box.reset_on_close
    assert peer.finish() == expected


def test_a_shut_down_stream_ends_with_close_notify(pair) -> None:
    def work(s: ssl.SSLSocket) -> tuple[bytes, bytes]:
        first = s.recv(100)
        return first, s.recv(100)  # b"" only at a clean end (close_notify)

    stream, peer = connect(pair, work=work)
    stream.send(b"last words")
    stream.shutdown(socket.SHUT_WR)
    assert peer.finish() == (b"last words", b"")


def test_end_of_stream_from_the_client_reads_as_zero(pair) -> None:
    stream, peer = connect(pair, work=lambda s: s.sendall(b"bye"))
    peer.finish()  # the client has closed (its close_notify sent)
    assert read_exactly(stream, 3) == b"bye"
    select.select([stream], [], [], 5)
    assert stream.recv_into(bytearray(10)) == 0


def test_a_client_gone_without_close_notify_reads_as_zero(pair) -> None:
    def work(s: ssl.SSLSocket) -> None:
        s.sendall(b"bye")
        raw = socket.socket(fileno=s.detach())  # no close_notify: a dropped connection
        raw.close()

    stream, peer = connect(pair, work=work)
    peer.finish()
    assert read_exactly(stream, 3) == b"bye"
    select.select([stream], [], [], 5)
    assert stream.recv_into(bytearray(10)) == 0
