"""SASL on the real `chatd serve`'s IRC listeners, against chatd accounts (protocol.md §12,
§13.7): PLAIN over TLS with the `irc` library from PyPI, SCRAM-SHA-256 on plain TCP with
a raw client and `scramp`, and a wrong password refused."""

from __future__ import annotations

import base64
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from accountwire import leaks, logged_in, register
from ircwire import IrcClient
from scramp import ScramClient
from serverproc import ServerProcess
from test_server_irc_library import Bot
from wire import connect, register_account

TLS_DIR = Path(__file__).parent / "tls"
PASSWORD = "correct horse battery"


@pytest.fixture
def server(start: Callable[..., ServerProcess]) -> ServerProcess:
    srv = start({"tls": {"cert": str(TLS_DIR / "server.pem"), "key": str(TLS_DIR / "server.key"),
                         "port": 0},
                 "irc": {"port": -1, "tls_port": -1},
                 "accounts": {"iterations": 4096}})  # the lowest: quick logins in tests
    register_account(srv.host, srv.tls_port, TLS_DIR / "ca.pem", "Sasha", PASSWORD)
    return srv


def trusting() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=TLS_DIR / "ca.pem")


def test_plain_over_tls_with_the_irc_library(server: ServerProcess) -> None:
    bot = Bot(server, "guest", server.irc_tls_port, trusting(), password=PASSWORD,
              sasl_login="Sasha")
    try:
        welcome = bot.wait_type("welcome")
        assert welcome.target == "Sasha"  # the account's nick, whatever NICK asked
    finally:
        bot.conn.close()
    # The password came in base64 in AUTHENTICATE: neither the log (at debug) nor the data
    # dir holds it in any form.
    server.stop()
    assert not leaks("\n".join(server.lines).encode(), PASSWORD)
    for path in server.data_dir.rglob("*"):
        if path.is_file():
            assert not leaks(path.read_bytes(), PASSWORD), path


def scram_login(client: IrcClient, account: str, password: str) -> str:
    """SCRAM-SHA-256 through AUTHENTICATE; the numeric that ends it."""
    scram = ScramClient(["SCRAM-SHA-256"], account, password)
    client.send("AUTHENTICATE SCRAM-SHA-256")
    client.wait_command("AUTHENTICATE", "+")
    client.send("AUTHENTICATE " + base64.b64encode(scram.get_client_first().encode()).decode())
    challenge = client.wait(lambda x: x.command in ("AUTHENTICATE", "904"))
    if challenge.command == "904":
        return "904"
    scram.set_server_first(base64.b64decode(challenge.params[0]).decode())
    client.send("AUTHENTICATE " + base64.b64encode(scram.get_client_final().encode()).decode())
    final = client.wait(lambda x: x.command in ("AUTHENTICATE", "904"))
    if final.command == "904":
        return "904"
    scram.set_server_final(base64.b64decode(final.params[0]).decode())  # proves the server
    client.send("AUTHENTICATE +")
    return client.wait(lambda x: x.command in ("903", "904")).command


def test_scram_on_plain_tcp_and_a_wrong_password(server: ServerProcess) -> None:
    client = IrcClient(server.host, server.irc_port)
    try:
        client.send("CAP LS 302", "CAP REQ :sasl", "NICK somebody", "USER u 0 * :u")
        ls = client.wait_command("CAP", "*", "LS")
        assert "sasl=SCRAM-SHA-256" in ls.params[-1].split()  # no PLAIN without TLS
        client.wait_command("CAP", "*", "ACK")
        assert scram_login(client, "Sasha", "wrong password") == "904"
        assert scram_login(client, "Sasha", PASSWORD) == "903"
        client.send("CAP END")
        client.wait_command("001", "Sasha")
    finally:
        client.close()


def test_irc_clients_see_who_is_logged_in(server: ServerProcess) -> None:
    """account-tag, extended-join and account-notify on the real server: a native session
    logged in to Sasha, a native guest who registers an account while in the room."""
    watcher = IrcClient(server.host, server.irc_port)
    sasha = connect(server)
    guest = connect(server, "gus")
    try:
        watcher.register("watcher", "message-tags account-tag account-notify extended-join")
        watcher.send("JOIN #acc")
        assert watcher.wait_command("JOIN").params == ["#acc", "*", "watcher"]  # a guest
        watcher.wait_command("366")
        logged_in(sasha, "Sasha", PASSWORD)
        sasha.join("#acc")
        join = watcher.wait_command("JOIN", "#acc")
        assert (join.params, join.tags.get("account")) == (["#acc", "Sasha", "Sasha"], "Sasha")
        sasha.say("#acc", "signed")
        said = watcher.wait_command("PRIVMSG", "#acc")
        assert (said.params[1], said.tags["account"]) == ("signed", "Sasha")
        guest.join("#acc")
        join = watcher.wait_command("JOIN", "#acc")
        assert join.params == ["#acc", "*", "gus"] and "account" not in join.tags
        assert register(guest, "Gus", PASSWORD)["type"] == "registered"
        assert watcher.wait_command("NICK").params == ["Gus"]
        account = watcher.wait_command("ACCOUNT")
        assert account.params == ["Gus"] and str(account.source).startswith("Gus!")
    finally:
        for client in (watcher, sasha, guest):
            client.close()
