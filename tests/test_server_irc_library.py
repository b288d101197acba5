"""A client nobody here wrote: the `irc` library from PyPI (jaraco/irc) on the real
`chatd serve`, chatting with a native client in one room."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import irc.client
import irc.connection
import pytest
from serverproc import ServerProcess
from wire import connect


class Bot:
    """An irc.client connection whose events are kept, and waited for by polling the
    library's reactor until a deadline."""

    def __init__(self, server: ServerProcess, nick: str, port: int | None = None,
                 tls: ssl.SSLContext | None = None, **login: Any) -> None:
        self.reactor = irc.client.Reactor()
        self.events: list[Any] = []
        self.reactor.add_global_handler("all_events", lambda c, e: self.events.append(e))
        # Over TLS the library wraps its socket with the context (its documented way).
        factory = irc.connection.Factory(wrapper=partial(
            tls.wrap_socket, server_hostname="localhost")) if tls else irc.connection.Factory()
        self.conn = self.reactor.server().connect(server.host, port or server.irc_port, nick,
                                                  connect_factory=factory, **login)

    def wait(self, pred: Callable[[Any], bool], timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, event in enumerate(self.events):
                if pred(event):
                    return self.events.pop(i)
            self.reactor.process_once(0.05)
        raise TimeoutError(f"no such event; got {[(e.type, e.arguments) for e in self.events]}")

    def wait_type(self, kind: str, timeout: float = 10.0) -> Any:
        return self.wait(lambda e: e.type == kind, timeout)


@pytest.fixture
def server(start: Callable[..., ServerProcess]) -> Iterator[ServerProcess]:
    yield start({"irc": {"port": -1}})


def test_the_irc_library_chats_with_a_native_client(server: ServerProcess) -> None:
    bob = connect(server, "bob")
    bob.join("#lib")
    bob.say("#lib", "history for you")
    bot = Bot(server, "libbot")
    try:
        welcome = bot.wait_type("welcome")
        assert welcome.target == "libbot"
        bot.conn.join("#lib")
        assert bot.wait_type("join").target == "#lib"
        names = bot.wait_type("namreply")
        assert set(names.arguments[-1].split()) == {"libbot", "bob"}
        old = bot.wait_type("pubmsg")
        assert (old.source.nick, old.arguments) == ("bob", ["history for you"])
        assert bob.wait_type("join", room="#lib")["nick"] == "libbot"

        bot.conn.privmsg("#lib", "hello from a library")
        bot.conn.action("#lib", "beeps")
        got = bob.collect(lambda f: f["type"] == "message" and f["from"] == "libbot", 2)
        assert [(m["text"], m["action"]) for m in got] == [("hello from a library", False),
                                                           ("beeps", True)]
        bob.say("#lib", "hi bot")
        bob.say("#lib", "waves back", action=True)
        said = bot.wait_type("pubmsg")
        assert (said.source.nick, said.target, said.arguments) == ("bob", "#lib", ["hi bot"])
        action = bot.wait_type("action")
        assert (action.source.nick, action.arguments) == ("bob", ["waves back"])

        bot.conn.topic("#lib", "set by a library")
        assert bob.wait_type("topic", room="#lib")["topic"] == "set by a library"
        bot.conn.privmsg("bob", "a private word")
        private = bob.wait(lambda f: f["type"] == "message" and f.get("to") == "bob")
        assert (private["from"], private["text"]) == ("libbot", "a private word")

        bob.send({"type": "quit", "reason": "off"})
        quit_event = bot.wait_type("quit")
        assert (quit_event.source.nick, quit_event.arguments) == ("bob", ["off"])
        bot.conn.quit("done")
        bot.wait_type("disconnect")
    finally:
        bot.conn.close()
        bob.close()


TLS_DIR = Path(__file__).parent / "tls"


def test_the_irc_library_over_tls(start: Callable[..., ServerProcess]) -> None:
    """irc.tls_port: the same IRC over the TLS settings' certificate."""
    server = start({"tls": {"cert": str(TLS_DIR / "server.pem"),
                            "key": str(TLS_DIR / "server.key"), "port": 0},
                    "irc": {"port": 0, "tls_port": -1}})
    bob = connect(server, "bob")
    bob.join("#sec")
    bot = Bot(server, "tlsbot", server.irc_tls_port,
              ssl.create_default_context(cafile=TLS_DIR / "ca.pem"))
    try:
        assert bot.wait_type("welcome").target == "tlsbot"
        bot.conn.join("#sec")
        assert bot.wait_type("join").target == "#sec"
        bot.conn.privmsg("#sec", "sent over TLS")
        said = bob.wait(lambda f: f["type"] == "message" and f["from"] == "tlsbot")
        assert said["text"] == "sent over TLS"
        bob.say("#sec", "and back")
        got = bot.wait_type("pubmsg")
        assert (got.source.nick, got.arguments) == ("bob", ["and back"])
    finally:
        bot.conn.close()
        bob.close()
