"""chat-client over TLS: trust (system CAs, --ca, --tofu with pins in known_hosts) in unit
tests, and the real `chat-client --plain` against the real `chatd serve` (tls.port = 0)."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from datetime import UTC
from pathlib import Path

import pytest
from serverproc import ServerProcess, write_config
from test_client_plain import CLIENT, ROOT, client_env
from test_server_tls import OTHER_CERT, OTHER_KEY, TLS_DIR, pin_of, tls_port, tls_settings
from tuirunner import TUI
from wire import Client

from chat_client.cli import build_parser, main, make_opener, parse_address
from chat_client.clock import Clock
from chat_client.connection import Connection
from chat_client.core import Core
from chat_client.lifecycle import ConnState, TLSRefused
from chat_client.model import SERVER
from chat_client.stream import TLSOpener
from chat_client.trust import KnownHosts, client_context, pin_check, server_name

CA = TLS_DIR / "ca.pem"
FAST = {"rate": {"msg_rate": 1e5, "msg_burst": 100000}}


def der(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


# ---- trust, unit ----

def test_known_hosts_keeps_other_lines(tmp_path) -> None:
    path = tmp_path / "state" / "known_hosts"
    known = KnownHosts(path)
    assert known.lookup("a:1") is None
    known.add("a:1", "sha256//A")
    path.write_text(path.read_text() + "# a comment\nb:2 sha256//B")  # no final newline
    known.add("[::1]:3", "sha256//C")
    assert [known.lookup(s) for s in ("a:1", "b:2", "[::1]:3", "c:4")] == [
        "sha256//A", "sha256//B", "sha256//C", None]
    assert "# a comment\n" in path.read_text()


def test_server_names_in_known_hosts() -> None:
    assert server_name("Chat.Example.ORG", 7778) == "chat.example.org:7778"
    assert server_name("::1", 7778) == "[::1]:7778"


def test_a_key_is_pinned_on_first_use_then_checked(tmp_path) -> None:
    known = KnownHosts(tmp_path / "known_hosts")
    notes: list[str] = []
    check = pin_check("host:7778", known, notes.append)
    check(der(TLS_DIR / "server.pem"))
    assert known.lookup("host:7778") == pin_of(TLS_DIR / "server.pem")
    assert len(notes) == 1 and "pinning its key sha256//" in notes[0]
    check(der(TLS_DIR / "server.pem"))  # the same key: silently fine
    assert len(notes) == 1
    with pytest.raises(TLSRefused) as refused:
        check(der(OTHER_CERT))
    text = str(refused.value)
    assert not refused.value.retry
    assert "REFUSED" in text and "CHANGED" in text
    assert pin_of(TLS_DIR / "server.pem") in text and pin_of(OTHER_CERT) in text
    assert f"delete the line starting 'host:7778 ' from {known.path}" in text


def test_an_unreadable_known_hosts_refuses(tmp_path) -> None:
    (tmp_path / "known_hosts").mkdir()  # reading it fails
    check = pin_check("host:7778", KnownHosts(tmp_path / "known_hosts"), print)
    with pytest.raises(TLSRefused, match="cannot read"):
        check(der(TLS_DIR / "server.pem"))


def test_a_pin_that_cannot_be_saved_is_said_and_the_connection_goes_on(tmp_path) -> None:
    (tmp_path / "file").write_text("")
    notes: list[str] = []
    pin_check("host:1", KnownHosts(tmp_path / "file" / "known_hosts"), notes.append)(
        der(TLS_DIR / "server.pem"))
    assert "NOT saved" in notes[0]


def test_client_contexts_need_tls_1_2() -> None:
    for ctx in (client_context(), client_context(CA), client_context(tofu=True)):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert client_context(CA).verify_mode == ssl.CERT_REQUIRED
    assert client_context(CA).check_hostname


def test_tls_flags() -> None:
    assert parse_address("h", 7778) == ("h", 7778)
    args = build_parser().parse_args(["h", "--tofu"])
    assert args.tofu and args.ca is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["h", "--tofu", "--ca", "x.pem"])


def test_an_unreadable_ca_file_is_a_usage_error(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["h", "--ca", str(tmp_path / "missing.pem"), "--plain"])
    assert exited.value.code == 2
    assert "--ca" in capsys.readouterr().err


# ---- the real client against the real server ----

@pytest.fixture
def server(start) -> ServerProcess:
    return start({"tls": tls_settings(), **FAST})


def run(port: int, args: list[str], stdin: str, state: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CLIENT, "--plain", f"127.0.0.1:{port}", *args], input=stdin,
                          capture_output=True, text=True, cwd=ROOT, env=client_env(state),
                          timeout=30)


def test_chat_client_with_a_private_ca(server, tmp_path) -> None:
    with Client("127.0.0.1", server.port) as bob:
        bob.hello("bob")
        bob.join("#general")
        done = run(tls_port(server), ["--ca", str(CA), "--nick", "alice"],
                   "hello over TLS\n", tmp_path)
        assert done.returncode == 0, done.stderr
        assert "<alice> hello over TLS" in done.stdout
        assert bob.messages("#general", 1)[0]["text"] == "hello over TLS"


def test_a_server_of_the_config_file_with_its_ca(server, tmp_path) -> None:
    # `ca` relative to the config file, which names the server: no flag on the command line
    (tmp_path / "ca.pem").write_bytes(CA.read_bytes())
    config = tmp_path / "config.toml"
    config.write_text(f'[servers.work]\naddress = "127.0.0.1:{tls_port(server)}"\n'
                      'ca = "ca.pem"\n')
    done = subprocess.run([*CLIENT, "--plain", "work", "--config", str(config), "--nick",
                           "alice"], input="hello over TLS\n", capture_output=True,
                          text=True, cwd=ROOT, env=client_env(tmp_path), timeout=30)
    assert done.returncode == 0, done.stderr
    assert "<alice> hello over TLS" in done.stdout


def test_chat_client_refuses_a_certificate_the_system_does_not_trust(server, tmp_path) -> None:
    done = run(tls_port(server), ["--tls", "--nick", "alice"], "not sent\n", tmp_path)
    assert done.returncode == 1
    assert "its TLS certificate is not trusted" in done.stderr
    assert "--ca FILE" in done.stderr and "--tofu" in done.stderr
    assert "connected as" not in done.stdout


def test_chat_client_over_tls_to_the_plain_port_says_so(server, tmp_path) -> None:
    done = run(server.port, ["--ca", str(CA), "--nick", "alice"], "not sent\n", tmp_path)
    assert done.returncode == 1
    assert f"(is {server.port} the server's TLS port?)" in done.stderr


def test_chat_client_trusts_on_first_use_and_refuses_a_changed_key(server, tmp_path) -> None:
    port = tls_port(server)
    known = tmp_path / "known_hosts"
    first = run(port, ["--tofu", "--nick", "carol"], "first\n", tmp_path)
    assert first.returncode == 0, first.stderr
    assert "pinning its key" in first.stderr and "<carol> first" in first.stdout
    assert known.read_text() == f"127.0.0.1:{port} {pin_of(TLS_DIR / 'server.pem')}\n"

    again = run(port, ["--tofu", "--nick", "carol"], "again\n", tmp_path)
    assert again.returncode == 0 and again.stderr == "" and "<carol> again" in again.stdout

    mark = server.mark()  # the server gets another key
    write_config(server.config_path, {"tls": tls_settings(OTHER_CERT, OTHER_KEY), **FAST})
    server.signal(1)  # SIGHUP
    server.wait_for_log("SIGHUP: new TLS connections get", start=mark)
    with Client("127.0.0.1", server.port) as bob:
        bob.hello("bob")
        bob.join("#general")
        refused = run(port, ["--tofu", "--nick", "carol"], "intercepted?\n", tmp_path)
        assert refused.returncode == 1
        assert "REFUSED: the TLS key of" in refused.stderr and str(known) in refused.stderr
        assert pin_of(OTHER_CERT) in refused.stderr
        assert "connected as" not in refused.stdout
        bob.sync()
        assert not bob.pending("message")

    known.write_text("")  # what the message says to do, after checking the new key
    fixed = run(port, ["--tofu", "--nick", "carol"], "new key\n", tmp_path)
    assert fixed.returncode == 0 and "<carol> new key" in fixed.stdout
    assert pin_of(OTHER_CERT) in known.read_text()


def test_the_full_screen_client_shows_a_refusal_and_does_not_retry(server, tmp_path) -> None:
    port = tls_port(server)
    known = KnownHosts(tmp_path / "known_hosts")
    known.add(f"127.0.0.1:{port}", "sha256//not-this-one")
    shown: list[str] = []
    opener = TLSOpener("127.0.0.1", port, client_context(tofu=True),
                       check=pin_check(f"127.0.0.1:{port}", known, print),
                       on_refused=shown.append)
    client = TUI("127.0.0.1", port, "alice", ["#general"], clock=Clock(zone=UTC), opener=opener)
    try:
        client.wait(lambda: client.ui.conn.state is ConnState.CLOSED, "the connection to end")
        assert len(shown) == 1 and "REFUSED: the TLS key of" in shown[0]
    finally:
        client.close()


def test_the_full_screen_client_shows_pins_and_refusals_in_the_server_buffer(
        tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CHAT_CLIENT_STATE_DIR", str(tmp_path))
    parser = build_parser()
    args = parser.parse_args(["h:1", "--tofu"])
    args.tls = True
    core = Core("alice", ["#general"])
    opener = make_opener(parser, args, "h", 1, core, plain=False)
    assert isinstance(opener, TLSOpener) and opener.check and opener.on_refused
    opener.check(der(TLS_DIR / "server.pem"))
    opener.on_refused("REFUSED: ...")
    pinned, refused = [(line.kind, line.text) for line in
                       core.model.buffers[SERVER].lines][-2:]
    assert pinned[0] == "notice" and pinned[1].startswith("first TLS connection to h:1")
    assert refused == ("error", "REFUSED: ...")


def test_a_tls_opener_connection_ends_cleanly(server, tmp_path) -> None:
    """Quit over TLS: the server's close_notify and end of stream read as a clean close."""
    async def go() -> str:
        core = Core("alice", ["#general"])
        opener = TLSOpener("127.0.0.1", tls_port(server), client_context(CA))
        conn = Connection(opener, core, None, first_failure_fatal=True)
        task = asyncio.create_task(conn.run())
        while not core.registered:
            assert not task.done()
            await asyncio.sleep(0.02)
        await conn.quit("bye")
        await asyncio.wait_for(task, 10)
        return str(conn.ended)

    assert asyncio.run(asyncio.wait_for(go(), 20)) == "connection closed by the server"
