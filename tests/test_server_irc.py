"""IRC clients on the real `chatd serve` (the IRC listener), in the same rooms as native
clients: both see each other, IRCv3 extras work, and the parent's refusals are IRC."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from ircwire import IrcClient, irc_connect
from serverproc import ServerProcess, write_config
from wire import connect

from chatd.irc import Line

IRC = {"irc": {"port": -1}}  # any free port


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("irc"), IRC).start()
    yield srv
    srv.stop()


def nick_of(line: Line) -> str:
    return (line.source or "").split("!")[0]


def test_the_listener_is_logged(server: ServerProcess) -> None:
    assert server.irc_port not in (0, server.port)
    server.wait_for_log(rf"listening for IRC on 127\.0\.0\.1:{server.irc_port}$")


def test_irc_and_native_clients_chat_in_one_room(server: ServerProcess) -> None:
    bob = connect(server, "bob1")
    bob.join("#mixed")
    bob.say("#mixed", "before you came")
    # A plain client (no capabilities): history on join, as PRIVMSGs.
    alice = irc_connect(server, "alice1", caps="")
    alice.send("JOIN #mixed")
    alice.wait_command("JOIN", "#mixed")
    names = alice.wait_command("353")
    assert set(names.params[-1].split()) == {"alice1", "bob1"}
    alice.wait_command("366")
    old = alice.wait_command("PRIVMSG", "#mixed")
    assert (nick_of(old), old.params[1]) == ("bob1", "before you came")
    assert bob.wait_type("join", room="#mixed")["nick"] == "alice1"

    alice.send("PRIVMSG #mixed :hello bob", "PRIVMSG #mixed :\x01ACTION waves\x01")
    said = bob.collect(lambda f: f["type"] == "message" and f["from"] == "alice1", 2)
    assert [(m["from"], m["text"], m["action"]) for m in said] == [
        ("alice1", "hello bob", False), ("alice1", "waves", True)]

    bob.say("#mixed", "hi alice\nsecond line")
    bob.say("#mixed", "grins", action=True)
    lines = [alice.wait_command("PRIVMSG", "#mixed") for _ in range(3)]
    assert [(nick_of(x), x.params[1]) for x in lines] == [
        ("bob1", "hi alice"), ("bob1", "second line"), ("bob1", "\x01ACTION grins\x01")]

    alice.send("TOPIC #mixed :the mixed room")
    assert bob.wait_type("topic", room="#mixed")["topic"] == "the mixed room"
    assert bob.call({"type": "topic", "room": "#mixed", "topic": "bob's now"})["type"] != "error"
    topic = alice.wait(lambda x: x.command == "TOPIC" and nick_of(x) == "bob1")
    assert topic.params == ["#mixed", "bob's now"]

    assert bob.call({"type": "part", "room": "#mixed"})["type"] == "parted"
    assert nick_of(alice.wait_command("PART", "#mixed")) == "bob1"
    bob.join("#mixed")
    assert nick_of(alice.wait_command("JOIN", "#mixed")) == "bob1"
    alice.send("PART #mixed :bye room")
    assert bob.wait_type("part", room="#mixed")["nick"] == "alice1"
    alice.send("JOIN #mixed")
    alice.wait_command("366")
    bob.wait_type("join", room="#mixed")
    bob.send({"type": "quit", "reason": "gone home"})
    quit_line = alice.wait_command("QUIT")
    assert (nick_of(quit_line), quit_line.params) == ("bob1", ["gone home"])

    carol = connect(server, "carol1")
    carol.join("#mixed")
    alice.send("QUIT :see you")
    error = alice.wait_command("ERROR")
    assert "see you" in error.params[0]
    alice.wait_closed()
    assert carol.wait_type("quit", nick="alice1")["reason"] == "see you"
    carol.close()


def test_ircv3_client_gets_ids_times_echo_labels_and_chathistory(server: ServerProcess) -> None:
    bob = connect(server, "bob2")
    bob.join("#v3")
    ids = [bob.say("#v3", f"old {i}")["id"] for i in range(3)]
    alice = irc_connect(server, "alice2")
    alice.send("@label=j1 JOIN #v3")
    joined = alice.wait_command("BATCH")  # labelled: the JOIN's lines in one batch
    assert joined.tags.get("label") == "j1" and joined.params[1] == "labeled-response"
    alice.wait_command("BATCH", "-" + joined.params[0][1:])

    alice.send("@label=m1 PRIVMSG #v3 :hi bob")
    echo = alice.wait_command("PRIVMSG", "#v3")
    message = bob.wait_type("message", room="#v3", **{"from": "alice2"})
    assert echo.tags["label"] == "m1" and echo.tags["msgid"] == str(message["id"])
    assert echo.tags["time"].endswith("Z") and message["from"] == "alice2"

    bob.say("#v3", "from bob")
    heard = alice.wait(lambda x: x.command == "PRIVMSG" and nick_of(x) == "bob2")
    assert int(heard.tags["msgid"]) > message["id"] and heard.params[1] == "from bob"

    alice.send("@label=h1 CHATHISTORY LATEST #v3 * 10")
    start = alice.wait(lambda x: x.command == "BATCH" and x.tags.get("label") == "h1")
    assert start.params[1] == "chathistory" and start.params[2] == "#v3"
    ref = start.params[0][1:]
    got = []
    while True:
        line = alice.wait(lambda x: x.tags.get("batch") == ref or x.params[:1] == ["-" + ref])
        if line.command == "BATCH":
            break
        got.append((line.tags["msgid"], line.params[1]))
    assert got == [(str(ids[0]), "old 0"), (str(ids[1]), "old 1"), (str(ids[2]), "old 2"),
                   (str(message["id"]), "hi bob"), (heard.tags["msgid"], "from bob")]
    alice.close()
    bob.close()


def test_a_refusal_on_the_irc_port_is_an_error_line(start) -> None:  # noqa: ANN001
    server = start({**IRC, "limits": {"max_sessions": 1}})
    with connect(server, "only"):
        refused = IrcClient(server.host, server.irc_port)
        refused.send("NICK late", "USER late 0 * :late")
        assert [str(x) for x in refused.wait_closed()] == [
            str(Line("ERROR", ["Closing link: chatd (max_sessions=1 reached)"]))]
        refused.close()


def test_the_handshake_deadline_and_spares_serve_irc_too(start) -> None:  # noqa: ANN001
    server = start({**IRC, "keepalive": {"handshake_timeout": 0.5},
                    "server": {"spare_children": 2}})
    server.wait_for_log(r"listening for IRC")
    silent = IrcClient(server.host, server.irc_port)
    silent.send("CAP LS 302")  # and never CAP END: no hello within the deadline
    error = silent.wait_command("ERROR")
    assert "Closing link" in error.params[0]
    silent.wait_closed()
    alice = irc_connect(server, "alice3")  # served by a spare (the socket handed over)
    alice.send("PING :x1")
    assert alice.wait_command("PONG").params[-1] == "x1"
    alice.close()


def test_an_irc_port_in_use_stops_start_up_naming_it(server: ServerProcess,
                                                     tmp_path: Path) -> None:
    config = write_config(tmp_path / "chatd.toml", {"irc": {"port": server.irc_port}})
    done = subprocess.run([sys.executable, "-m", "chatd", "serve", "--host", "127.0.0.1",
                           "--port", "0", "--data-dir", str(tmp_path / "data"), "--config",
                           str(config)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1, done.stderr
    assert f"in use: port {server.irc_port} (irc.port)" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
