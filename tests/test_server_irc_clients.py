"""IRC clients nobody here wrote, on the real `chatd serve`: irssi in tmux, read off its
screen, and WeeChat without a screen (`weechat-headless`, driven through its FIFO and read
from its buffer logs), each chatting with a full-screen `chat-client` in the same room.

They connect with the commands README's "IRC" section gives, typed as a user would.
.ci/run installs both programs; a machine without one skips its test, saying so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from serverproc import ServerProcess
from tmuxpane import Tmux, chat_client_command
from wire import register_account


def need(program: str) -> None:
    for binary in ("tmux", program):
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} is not installed (.ci/run installs it)")


CA = Path(__file__).parent / "tls" / "ca.pem"  # the test certificate's issuer
# The certificate is for localhost: a client checks the name it connected to.
TLS = {"cert": str(CA.parent / "server.pem"), "key": str(CA.parent / "server.key"), "port": 0}
over_tls = pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])


@pytest.fixture
def server(start: Callable[..., ServerProcess]) -> Iterator[ServerProcess]:
    # The default rate limits (a person's pace); IRC on plain TCP and over TLS.
    yield start({"irc": {"port": -1, "tls_port": -1}, "tls": TLS,
                 "accounts": {"iterations": 4096}})  # the lowest: quick logins


def native(tmux: Tmux, server: ServerProcess, state: Path) -> None:
    """bob, in chat-client, says something before the IRC user comes (history on join)."""
    tmux.start("bob", chat_client_command(server.host, server.port, "bob", state))
    tmux.wait_screen("bob", "you joined #general")
    tmux.type("bob", "said before you came")
    tmux.wait_screen("bob", "bob │ said before you came")


def chat_both_ways(tmux: Tmux, nick: str, say: Callable[[str], object],
                   shows: Callable[[str], object], bob_says: str, bob_acts: str) -> None:
    """The IRC user and bob each say a line and do an action; each appears on the other's
    side (`bob_says`, `bob_acts`: how the IRC client shows bob's)."""
    say("hello bob")
    tmux.wait_screen("bob", f"{nick} │ hello bob")
    say("/me waves")
    tmux.wait_screen("bob", f"* │ {nick} waves")
    tmux.type("bob", f"hi {nick}")
    shows(bob_says.format(f"hi {nick}"))
    tmux.type("bob", "/me grins")
    shows(bob_acts.format("grins"))


@over_tls
def test_irssi_chats_with_chat_client(tmux: Tmux, server: ServerProcess, tmp_path: Path,
                                      tls: bool) -> None:
    need("irssi")
    native(tmux, server, tmp_path / "bob")
    home = tmp_path / "irssi"
    home.mkdir()
    tmux.start("irssi", ["env", "TERM=screen", "irssi", f"--home={home}", "-n", "ircalice"])
    tmux.wait_screen("irssi", "Irssi v")
    tmux.type("irssi", f"/connect -tls -tls_cafile {CA} localhost {server.irc_tls_port}" if tls
              else f"/connect {server.host} {server.irc_port}")
    tmux.wait_screen("irssi", "Welcome to the chatd chat server, ircalice")
    tmux.type("irssi", "/join #general")
    # The room's recent history on join, then live chat both ways.
    screen = tmux.wait_screen("irssi", "< bob> said before you came")
    assert "ircalice [~u@chatd] has joined #general" in screen, screen
    tmux.wait_screen("bob", "ircalice joined #general")

    chat_both_ways(tmux, "ircalice", lambda line: tmux.type("irssi", line),
                   lambda text: tmux.wait_screen("irssi", text), "< bob> {}", "* bob {}")
    tmux.type("bob", "/topic chatting across protocols")
    tmux.wait_screen("irssi", "bob changed the topic of #general to: chatting across protocols")

    # Away, both ways: irssi's /away seen in chat-client's /whois, chat-client's /away in
    # its status bar and as irssi's answer to a message (301 RPL_AWAY).
    tmux.type("irssi", "/away gone for tea")
    tmux.wait_screen("irssi", "[ircalice (zZzZ)]")  # its status bar, once it got 306
    until_shown(tmux, "bob", "/whois ircalice", "away: gone for tea")
    tmux.type("bob", "/away lunch")
    tmux.wait_screen("bob", "bob (away)")
    tmux.type("irssi", "/query bob")
    tmux.type("irssi", "are you there?")
    tmux.wait_screen("irssi", "bob is away: lunch")
    tmux.wait_screen("bob", "ircalice(1!)")  # the direct message, in the hotlist

    tmux.type("irssi", "/quit see you")
    tmux.wait_screen("bob", "ircalice quit #general")


def until_shown(tmux: Tmux, pane: str, command: str, needle: str, tries: int = 5) -> None:
    """Type `command` until `needle` shows (what it reports may still be on its way)."""
    for _ in range(tries - 1):
        tmux.type(pane, command)
        try:
            tmux.wait_screen(pane, needle, timeout=3.0)
            return
        except AssertionError:
            continue
    tmux.type(pane, command)
    tmux.wait_screen(pane, needle)


class WeeChat:
    """weechat-headless in a tmux pane (its log on the pane): commands go through its FIFO,
    what it shows in a buffer is read from that buffer's log file."""

    def __init__(self, tmux: Tmux, home: Path) -> None:
        self.home, self.fifo, self.logs = home, home / "fifo", home / "logs"
        setup = ";".join([f"/set fifo.file.path {self.fifo}", "/set logger.file.flush_delay 0",
                          f"/set logger.file.path {self.logs}"])
        tmux.start("weechat", ["weechat-headless", "--stdout", "-d", str(home),
                               "-P", "irc,logger,fifo", "-r", setup])
        self.tmux = tmux
        # weechat-headless outlives its pane's hang-up (tmux kill-server): stop() ends it.
        self.pid = int(tmux("display-message", "-p", "-t", "weechat", "#{pane_pid}"))
        deadline = time.monotonic() + 15
        while not (self.fifo.exists() and self.logs.exists()):
            assert time.monotonic() < deadline, tmux.screen("weechat")
            time.sleep(0.05)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)

    def command(self, buffer: str, line: str) -> None:
        with self.fifo.open("w") as fifo:  # weechat keeps it open for reading
            fifo.write(f"{buffer} *{line}\n")

    def wait_log(self, buffer: str, needle: str, timeout: float = 15.0) -> str:
        path = self.logs / f"{buffer}.weechatlog"
        deadline = time.monotonic() + timeout
        while True:
            text = path.read_text() if path.exists() else ""
            if needle in text:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not in {path.name}:\n{text}\n"
                                     f"{self.tmux.screen('weechat')}")
            time.sleep(0.1)


@over_tls
def test_weechat_chats_with_chat_client(tmux: Tmux, server: ServerProcess, tmp_path: Path,
                                        tls: bool) -> None:
    need("weechat-headless")
    native(tmux, server, tmp_path / "bob")
    wee = WeeChat(tmux, tmp_path / "weechat")
    try:
        weechat_session(tmux, server, wee, tls)
    finally:
        wee.stop()


def weechat_session(tmux: Tmux, server: ServerProcess, wee: WeeChat, tls: bool) -> None:
    add = [f"/set weechat.network.gnutls_ca_user {CA}",
           f"/server add chatd localhost/{server.irc_tls_port} -ssl"] if tls else [
        f"/server add chatd {server.host}/{server.irc_port}"]
    for command in (*add, '/set irc.server.chatd.nicks "weealice"', "/connect chatd"):
        wee.command("core.weechat", command)
    wee.wait_log("irc.server.chatd", "Welcome to the chatd chat server, weealice")
    wee.command("irc.server.chatd", "/join #general")
    log = wee.wait_log("irc.chatd.#general", "bob\tsaid before you came")
    assert "weealice (weealice) (~u@chatd) has joined #general" in log, log
    tmux.wait_screen("bob", "weealice joined #general")

    chat_both_ways(tmux, "weealice", lambda line: wee.command("irc.chatd.#general", line),
                   lambda text: wee.wait_log("irc.chatd.#general", text), "bob\t{}",
                   " *\tbob {}")

    wee.command("irc.server.chatd", "/quit bye")
    tmux.wait_screen("bob", "weealice quit #general")


# ---- logging in to a chatd account (SASL) ----

PASSWORD = "correct horse battery"


def account(server: ServerProcess, name: str) -> None:
    register_account(server.host, server.tls_port, CA, name, PASSWORD)


def test_irssi_logs_in_with_sasl_plain_over_tls(tmux: Tmux, server: ServerProcess,
                                                tmp_path: Path) -> None:
    need("irssi")
    account(server, "Sasha")
    native(tmux, server, tmp_path / "bob")
    home = tmp_path / "irssi"
    home.mkdir()
    tmux.start("irssi", ["env", "TERM=screen", "irssi", f"--home={home}", "-n", "someone"])
    tmux.wait_screen("irssi", "Irssi v")
    for line in (f'/network add -sasl_mechanism PLAIN -sasl_username Sasha -sasl_password '
                 f'"{PASSWORD}" chatd',
                 f"/server add -tls -tls_cafile {CA} -network chatd localhost "
                 f"{server.irc_tls_port}", "/connect chatd"):
        tmux.type("irssi", line)
    tmux.wait_screen("irssi", "You are now logged in as Sasha")
    tmux.wait_screen("irssi", "Welcome to the chatd chat server, Sasha")  # its nick
    tmux.type("irssi", "/join #general")
    tmux.wait_screen("irssi", "< bob> said before you came")
    tmux.type("irssi", "hello from an account")
    tmux.wait_screen("bob", "Sasha │ hello from an account")


def test_weechat_logs_in_with_sasl_scram(tmux: Tmux, server: ServerProcess,
                                         tmp_path: Path) -> None:
    need("weechat-headless")
    account(server, "Sasha")
    wee = WeeChat(tmux, tmp_path / "weechat")
    try:
        for command in (f"/server add chatd {server.host}/{server.irc_port}",
                        '/set irc.server.chatd.nicks "someone"',
                        "/set irc.server.chatd.sasl_mechanism scram-sha-256",
                        "/set irc.server.chatd.sasl_username Sasha",
                        f'/set irc.server.chatd.sasl_password "{PASSWORD}"', "/connect chatd"):
            wee.command("core.weechat", command)
        log = wee.wait_log("irc.server.chatd", "Welcome to the chatd chat server, Sasha")
        assert "You are now logged in as Sasha" in log, log
        assert "SASL authentication successful" in log, log
    finally:
        wee.stop()
