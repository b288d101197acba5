"""The real `chatd serve` with a TLS listener (tls.port = 0), and protocol clients over TLS
(tests/wire.py); tests/test_client_tls.py drives the real chat-client."""

from __future__ import annotations

import re
import signal
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from serverproc import ServerProcess, listening_ports, newest_session, wait_until, write_config
from wire import Client, tls_connect

from chatd.tls import public_key_pin

TLS_DIR = Path(__file__).parent / "tls"
CERT, KEY = TLS_DIR / "server.pem", TLS_DIR / "server.key"
OTHER_CERT, OTHER_KEY = TLS_DIR / "other.pem", TLS_DIR / "other.key"
TLS_LISTEN_RE = re.compile(r"listening for TLS on (\S+):(\d+)")


def tls_settings(cert: Path = CERT, key: Path = KEY, **more: Any) -> dict[str, Any]:
    return {"cert": str(cert), "key": str(key), "port": 0, **more}


def tls_port(server: ServerProcess) -> int:
    match = TLS_LISTEN_RE.search(server.wait_for_log(TLS_LISTEN_RE))
    assert match
    return int(match.group(2))


def trusting() -> ssl.SSLContext:
    """A client context trusting the test CA (the server certificate's issuer)."""
    return ssl.create_default_context(cafile=TLS_DIR / "ca.pem")


def pin_of_server(port: int) -> str:
    """The public-key pin of the certificate a new connection gets."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw) as sock:
        der = sock.getpeercert(binary_form=True)
    assert der
    return public_key_pin(der)


def pin_of(cert: Path) -> str:
    return public_key_pin(ssl.PEM_cert_to_DER_cert(cert.read_text()))


def test_tls_and_plain_clients_talk_to_each_other(start) -> None:
    server = start({"tls": tls_settings()})
    port = tls_port(server)
    assert port != server.port
    # The log names the key pin clients see (to check a first-use pin against).
    assert pin_of_server(port) == pin_of(CERT)
    assert pin_of(CERT) in server.wait_for_log("TLS certificate")
    with tls_connect("127.0.0.1", port, trusting(), "alice") as alice, \
            Client("127.0.0.1", server.port) as bob:
        assert alice.sock.version() in ("TLSv1.2", "TLSv1.3")
        bob.hello("bob")
        alice.join("#general")
        bob.join("#general")
        alice.say("#general", "over TLS")
        assert bob.messages("#general", 1)[0]["text"] == "over TLS"
        bob.say("#general", "in the clear")
        got = alice.messages("#general", 2)  # its own first
        assert [m["text"] for m in got] == ["over TLS", "in the clear"]


def test_tls_only_has_no_plain_listener(tmp_path) -> None:
    server = ServerProcess(tmp_path, {"tls": tls_settings(plain=False)})
    server.start(port_from_log=False)
    try:
        port = tls_port(server)
        assert listening_ports(server.pid) == {port}
        assert not re.search(r"listening on ", "\n".join(server.lines))
        with tls_connect("127.0.0.1", port, trusting(), "alice") as alice:
            alice.join("#general")
    finally:
        server.stop()


def test_a_big_backlog_reaches_a_tls_client_that_was_not_reading(start) -> None:
    """Half a megabyte for a TLS client that reads only once it is all sent: every message
    arrives once, in order. (test_tls.py checks the ciphertext waiting in the session
    process when the socket is full, with the session's own outbox.)"""
    server = start({"tls": tls_settings(), "rate": {"msg_rate": 1e6, "msg_burst": 1000000}})
    with tls_connect("127.0.0.1", tls_port(server), trusting(), "alice") as alice, \
            Client("127.0.0.1", server.port) as bob:
        bob.hello("bob")
        alice.join("#general")
        bob.join("#general")
        texts = [f"{i:04d} " + "x" * 3000 for i in range(160)]
        for text in texts:
            bob.say("#general", text)
        got = alice.messages("#general", len(texts), timeout=30)
        assert [m["text"] for m in got] == texts


def test_a_silent_connection_is_dropped_at_the_handshake_deadline(start) -> None:
    server = start({"tls": tls_settings(), "keepalive": {"handshake_timeout": 0.3}})
    mark = server.mark()
    with socket.create_connection(("127.0.0.1", tls_port(server)), timeout=10) as sock:
        sock.send(b"\x16")  # the first byte of a ClientHello, and then nothing
        assert sock.recv(100) == b""  # closed, with no TLS alert or frame
    server.wait_for_log("TLS handshake failed: not completed within "
                        "keepalive.handshake_timeout", start=mark)
    server.wait_for_log(r"session \S+ \(pid \d+\) ended: exit status 0", start=mark)


def test_a_plain_client_on_the_tls_port_is_closed(start) -> None:
    server = start({"tls": tls_settings()})
    mark = server.mark()
    with Client("127.0.0.1", tls_port(server)) as client:
        client.send({"type": "hello", "version": 1, "nick": "alice"})
        with pytest.raises(ConnectionError):
            client.wait_type("welcome")
    server.wait_for_log("TLS handshake failed: wrong version number", start=mark)


def test_sighup_gives_new_connections_the_new_certificate_and_keeps_sessions(start) -> None:
    server = start({"tls": tls_settings()})
    port = tls_port(server)
    assert pin_of_server(port) == pin_of(CERT)
    with tls_connect("127.0.0.1", port, trusting(), "alice") as alice, \
            Client("127.0.0.1", server.port) as bob:
        bob.hello("bob")
        alice.join("#general")
        bob.join("#general")

        mark = server.mark()
        write_config(server.config_path, {"tls": tls_settings(OTHER_CERT, OTHER_KEY)})
        server.signal(signal.SIGHUP)
        server.wait_for_log("SIGHUP: new TLS connections get", start=mark)
        assert pin_of_server(port) == pin_of(OTHER_CERT)

        mark = server.mark()  # a broken pair: the certificate in use stays
        write_config(server.config_path, {"tls": tls_settings(CERT, OTHER_KEY)})
        server.signal(signal.SIGHUP)
        server.wait_for_log("SIGHUP: keeping the old TLS certificate: tls.key .* is not the "
                            "key of tls.cert", start=mark)
        assert pin_of_server(port) == pin_of(OTHER_CERT)

        alice.say("#general", "still here")  # the session from before the reloads
        assert bob.messages("#general", 1)[0]["text"] == "still here"
        bob.say("#general", "and you hear me")
        got = alice.messages("#general", 2)  # its own first
        assert [m["text"] for m in got] == ["still here", "and you hear me"]


def test_a_refused_tls_connection_is_closed_without_a_frame(start) -> None:
    server = start({"tls": tls_settings(), "limits": {"max_sessions": 1}})
    port = tls_port(server)
    with tls_connect("127.0.0.1", port, trusting(), "alice") as alice:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.send(b"\x16\x03\x01")  # the start of a ClientHello
            try:
                data = raw.recv(100)
            except ConnectionResetError:  # closed with the ClientHello unread
                data = b""
            assert data == b""  # not the plain error frame a plain client gets
        server.wait_for_log("refused 127.0.0.1: at a session cap")
        alice.sync()  # the session that was in keeps going


def test_spare_session_processes_serve_tls_clients(start) -> None:
    server = start({"tls": tls_settings(), "server": {"spare_children": 2}})
    port = tls_port(server)
    spares = wait_until(lambda: len(server.children()) == 2 and server.children(),
                        message="two spare session processes")
    mark = server.mark()
    with tls_connect("127.0.0.1", port, trusting(), "alice") as alice:
        alice.join("#general")
        _session, pid = newest_session(server, mark)
        assert pid in spares


def test_shutdown_does_not_wait_for_a_handshake_in_progress(start) -> None:
    """A session process in the TLS handshake ends when the parent says so, not at the
    handshake deadline (nor killed when stop_timeout is up)."""
    server = start({"tls": tls_settings(), "keepalive": {"handshake_timeout": 60.0}})
    with socket.create_connection(("127.0.0.1", tls_port(server)), timeout=10) as sock:
        sock.send(b"\x16")  # the handshake has begun and stalls
        mark = server.mark()
        newest_session(server, 0)
        began = time.monotonic()
        assert server.stop() == 0
        assert time.monotonic() - began < 5.0  # stop_timeout + close_grace is 8 s
        assert not any("did not stop" in line for line in server.lines[mark:])


def test_a_bad_certificate_stops_start_up(tmp_path) -> None:
    server = ServerProcess(tmp_path, {"tls": tls_settings(CERT, OTHER_KEY)})
    with pytest.raises(AssertionError):
        server.start(timeout=10)
    assert server.wait_exit() == 2
    assert any("is not the key of tls.cert" in line for line in server.lines)


def test_settings_name_the_missing_certificate(tmp_path) -> None:
    server = ServerProcess(tmp_path, {"tls": {"plain": False}})
    with pytest.raises(AssertionError):
        server.start(timeout=10)
    assert server.wait_exit() == 2
    assert any("need tls.cert" in line for line in server.lines)



def test_a_burst_of_small_records_is_read_to_the_end(start) -> None:
    """Many requests sent at once, each its own TLS record: the session reads them all,
    also those OpenSSL holds after the socket is empty (epoll cannot see them)."""
    server = start({"tls": tls_settings(), "rate": {"msg_rate": 1e6, "msg_burst": 1000000}})
    with tls_connect("127.0.0.1", tls_port(server), trusting(), "alice") as alice:
        alice.join("#general")
        labels = [alice.request({"type": "msg", "room": "#general", "text": f"{i:03d} " * 50})
                  for i in range(300)]
        acks = alice.collect(lambda f: f.get("type") == "ack", len(labels), timeout=20)
        assert [a["label"] for a in acks] == labels


def test_a_certificate_renewed_in_place_reaches_spare_processes_too(start, tmp_path) -> None:
    """Files replaced under the same names (as certbot does), then SIGHUP: no setting
    changed, yet the spares forked with the old certificate are replaced."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text(CERT.read_text())
    key.write_text(KEY.read_text())
    server = start({"tls": tls_settings(cert, key), "server": {"spare_children": 2}})
    port = tls_port(server)
    wait_until(lambda: len(server.children()) == 2, message="two spare session processes")
    assert pin_of_server(port) == pin_of(CERT)
    wait_until(lambda: len(server.children()) == 2, message="the spare used replaced")
    cert.write_text(OTHER_CERT.read_text())
    key.write_text(OTHER_KEY.read_text())
    mark = server.mark()
    server.signal(signal.SIGHUP)
    server.wait_for_log("SIGHUP: new TLS connections get", start=mark)
    assert pin_of_server(port) == pin_of(OTHER_CERT)
