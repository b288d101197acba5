"""Plain mode (`chat-client` with pipes) against a real server, with several clients."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from serverproc import FAST, ServerProcess
from wire import Client, connect

from chat_client.cli import parse_address

ROOT = Path(__file__).resolve().parent.parent
CLIENT = [sys.executable, "-m", "chat_client"]


def client_env(state: Path) -> dict[str, str]:
    return dict(os.environ, CHAT_CLIENT_STATE_DIR=str(state), PYTHONUNBUFFERED="1")


class Address(Protocol):
    host: str
    port: int


def run_client(srv: Address, args: list[str], stdin: str, state: Path,
               timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLIENT, f"{srv.host}:{srv.port}", *args], input=stdin,
                          capture_output=True, text=True, cwd=ROOT, env=client_env(state),
                          timeout=timeout)


def start_server(tmp_path: Path, config: dict[str, Any]) -> ServerProcess:
    data = tmp_path / "server"
    data.mkdir()
    return ServerProcess(data, config).start()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path, FAST)
    yield srv
    srv.stop()


class LineReader:
    """Collects a subprocess's output lines on a thread; waits with a deadline."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()

    def wait_for(self, needle: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines:
                    if needle in line:
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no line with {needle!r} in {self.lines}")
                self.cond.wait(remaining)


def test_printf_pipe_sends_waits_for_ack_and_exits_0(server: ServerProcess, bob: Client,
                                                     tmp_path: Path) -> None:
    # Exactly the documented usage, through a shell pipe.
    cmd = (f"printf 'hello\\n' | {shlex.join(CLIENT)} {server.host}:{server.port} "
           "--nick bot")
    proc = subprocess.run(cmd, shell=True, capture_output=True, text=True, cwd=ROOT,
                          env=client_env(tmp_path / "state"), timeout=30)
    assert proc.returncode == 0, proc.stderr
    got = bob.wait_type("message", room="#general", text="hello")
    assert got["from"] == "bot"
    # The ack came back before exit: the message line is printed with its sender.
    assert any(line.endswith("#general <bot> hello") for line in proc.stdout.splitlines())
    bob.wait_type("quit", room="#general", nick="bot")


def test_several_plain_clients_talk(server: ServerProcess, bob: Client,
                                    tmp_path: Path) -> None:
    watcher = subprocess.Popen([*CLIENT, f"{server.host}:{server.port}", "--nick", "watcher"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=ROOT,
                               env=client_env(tmp_path / "w"))
    try:
        assert watcher.stdin and watcher.stdout
        out = LineReader(watcher.stdout)
        out.wait_for("you joined #general")
        bob.wait_type("join", room="#general", nick="watcher")
        # A second plain client, a script, says two things; one is an action.
        done = run_client(server, ["--nick", "script"], "first line\n/me does a thing\n",
                          tmp_path / "s")
        assert done.returncode == 0, done.stderr
        out.wait_for("#general <script> first line")
        out.wait_for("#general * script does a thing")
        bob.say("#general", "hi from bob")
        out.wait_for("#general <bob> hi from bob")
        # The watcher talks back through its stdin: one line, one message.
        watcher.stdin.write("hello bob\n/msg bob private\n")
        watcher.stdin.flush()
        assert bob.wait_type("message", room="#general", text="hello bob")["from"] == "watcher"
        assert bob.wait_type("message", to="bob", text="private")["from"] == "watcher"
        bob.call({"type": "msg", "to": "watcher", "text": "dm back"})
        out.wait_for("@bob <bob> dm back")
        watcher.stdin.close()
        assert watcher.wait(20) == 0
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()


def test_commands_in_plain_mode(server: ServerProcess, bob: Client, tmp_path: Path) -> None:
    bob.join("#side")
    done = run_client(server, ["--nick", "bot"],
                      "/join #side\nto the side\n/topic #side Side talk\n/who\n/rooms\n",
                      tmp_path / "state")
    assert done.returncode == 0, done.stderr
    assert bob.wait_type("message", room="#side", text="to the side")["from"] == "bot"
    assert bob.wait_type("topic", room="#side")["topic"] == "Side talk"
    assert "#side: 2 member(s): " in done.stdout
    assert "#general (" in done.stdout and "#side (" in done.stdout


def test_room_option_picks_where_lines_go(server: ServerProcess, bob: Client,
                                          tmp_path: Path) -> None:
    bob.join("#ops")
    done = run_client(server, ["--nick", "bot", "--room", "#ops", "#general"], "deployed\n",
                      tmp_path / "state")
    assert done.returncode == 0, done.stderr
    assert bob.wait_type("message", text="deployed")["room"] == "#ops"


def test_default_rate_limits_are_respected(tmp_path: Path) -> None:
    srv = start_server(tmp_path, {})  # default msg_rate 5/s, msg_burst 20
    try:
        watcher = connect(srv, "watch")
        watcher.join("#general")
        lines = "".join(f"line {i}\n" for i in range(30))
        done = run_client(srv, ["--nick", "bulk"], lines, tmp_path / "state", timeout=40)
        assert done.returncode == 0, done.stderr
        texts = [watcher.wait_type("message", room="#general")["text"] for _ in range(30)]
        assert texts == [f"line {i}" for i in range(30)]
        watcher.close()
    finally:
        srv.stop()


def test_server_refusal_exits_nonzero(server: ServerProcess, tmp_path: Path) -> None:
    done = run_client(server, ["--nick", "bot"], "/msg nobody hello\n", tmp_path / "state")
    assert done.returncode == 1
    assert "no_such_nick" in done.stderr
    assert "chat-client: not delivered: hello\n" in done.stderr  # as README says


def test_local_usage_error_exits_nonzero(server: ServerProcess, tmp_path: Path) -> None:
    done = run_client(server, ["--nick", "bot"], "/frobnicate\n", tmp_path / "state")
    assert done.returncode == 1
    assert "unknown command /frobnicate" in done.stderr


def test_no_server_exits_nonzero_with_message(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = subprocess.run([*CLIENT, f"127.0.0.1:{port}", "--nick", "bot"], input="hello\n",
                          capture_output=True, text=True, cwd=ROOT,
                          env=client_env(tmp_path / "state"), timeout=30)
    assert done.returncode == 1
    assert "cannot connect" in done.stderr


def test_nick_in_use_by_another_client(server: ServerProcess, bob: Client,
                                       tmp_path: Path) -> None:
    # Plain mode takes a variant (bob_) rather than failing; the message still goes out.
    done = run_client(server, ["--nick", "bob"], "me too\n", tmp_path / "state")
    assert done.returncode == 0, done.stderr
    assert bob.wait_type("message", text="me too")["from"] == "bob_"


@pytest.mark.parametrize("args", [["--nick", "9lives"], ["--room", "#Bad!"],
                                  ["--scrollback", "1"]])
def test_bad_arguments_exit_2(args: list[str], tmp_path: Path) -> None:
    done = subprocess.run([*CLIENT, "127.0.0.1:7777", *args], input="", capture_output=True,
                          text=True, cwd=ROOT, env=client_env(tmp_path), timeout=30)
    assert done.returncode == 2 and "chat-client: error" in done.stderr


def test_help_explains_options(tmp_path: Path) -> None:
    done = subprocess.run([*CLIENT, "--help"], capture_output=True, text=True, cwd=ROOT,
                          env=client_env(tmp_path), timeout=30)
    assert done.returncode == 0
    for word in ("HOST:PORT", "--nick", "--room", "--plain", "#general",
                 "CHAT_CLIENT_STATE_DIR", "[::1]:7777"):
        assert word in done.stdout


@pytest.mark.parametrize(("text", "expected"), [
    ("localhost:7777", ("localhost", 7777)),
    ("example.org", ("example.org", 7777)),
    ("10.0.0.1:99", ("10.0.0.1", 99)),
    ("[::1]:7777", ("::1", 7777)),
    ("[::1]", ("::1", 7777)),
    ("::1", ("::1", 7777)),
    ("[fe80::1%eth0]:8000", ("fe80::1%eth0", 8000)),
])
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["host:0", "host:70000", ":7777", "host:port", "[::1]:x"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_ipv6_bracket_address(tmp_path: Path) -> None:
    data = tmp_path / "server"
    data.mkdir()
    srv = ServerProcess(data, FAST, host="::1").start()
    try:
        watcher = Client("::1", srv.port)
        watcher.hello("v6")
        watcher.join("#general")
        done = subprocess.run([*CLIENT, f"[::1]:{srv.port}", "--nick", "bot"],
                              input="over v6\n", capture_output=True, text=True, cwd=ROOT,
                              env=client_env(tmp_path / "state"), timeout=30)
        assert done.returncode == 0, done.stderr
        assert watcher.wait_type("message", text="over v6")["from"] == "bot"
        watcher.close()
    finally:
        srv.stop()


def test_plain_format_is_one_line_per_event() -> None:
    from datetime import UTC

    from chat_client.buffer import Buffer, Line
    from chat_client.clock import Clock
    from chat_client.plain import format_line

    clock = Clock(zone=UTC)
    room, dm = Buffer("#a", "#a", "room"), Buffer("bob", "Bob", "dm")
    stamp = "00:16:40"  # 1000 s after the epoch, in UTC
    assert format_line(room, Line("message", 1000.0, "two\nlines\x1b[2J", nick="bob"), clock) == \
        f"{stamp} #a <bob> two\\nlines\ufffd[2J"
    assert format_line(room, Line("action", 1000.0, "waves", nick="bob"), clock) == \
        f"{stamp} #a * bob waves"
    assert format_line(dm, Line("message", 1000.0, "hi", nick="Bob"), clock) == \
        f"{stamp} @Bob <Bob> hi"
    assert format_line(room, Line("notice", 1000.0, "bob joined #a"), clock) == \
        f"{stamp} #a -- bob joined #a"
